"""What a job is: a command, its options (the command's own option names) and its input files.

The same validation runs at submission (so a bad job is refused with a 4xx) and the same
pipeline functions run in the worker as in the `tfquant` command, so a job's file is
byte-identical to the command's with the same options.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from ..errors import ModelLoadError, RecipeError, naming, one_line, problem

MODEL_SUFFIXES = (".keras", ".h5", ".zip", ".tflite")
DATA_SUFFIXES = (".npz", ".npy", ".csv")

def _inputs() -> dict[str, tuple[set[str], set[str]]]:
    from ..spec import TRAINING

    return {"convert": ({"model", "calib"}, {"eval"}), **{name: ({"model", "train"}, {"calib", "eval"})
                                                          for name in TRAINING}}


INPUTS = _inputs()


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """The submitted JSON options -> (command, the whole spec as JSON), checked as the command checks its flags.

    The options are the command's spec (`tfquant.spec`): the same names, defaults and bounds;
    unknown keys are refused, older schema versions migrated. What only the server may decide
    (interpreter threads, server paths) is not an option here.
    """
    from ..spec import SPECS, spec_for

    try:
        data = json.loads(text or "{}")
    except ValueError as exc:
        raise RecipeError(f"recipe: expected a JSON object, found invalid JSON ({exc})") from None
    with naming("service"):
        try:
            if isinstance(data, dict):
                cls = SPECS.get(data.get("command", "convert"))
                local = sorted(name for f, opt, _ in (cls.options() if cls else ()) if not opt.service
                               for name in [f.name] if name in data)
                if local:
                    raise RecipeError(f"{', '.join(local)}: decided by the server, not an option of a job")
            spec = spec_for(data)
        except RecipeError as exc:
            raise RecipeError(f"recipe: {exc}") from None
    return spec.command, spec.to_dict()


def spec_of(command: str, options: dict[str, Any]):
    """A stored job's spec."""
    from ..spec import spec_for

    return spec_for({"command": command, **options})


def check_inputs(command: str, names: set[str], options: Optional[dict[str, Any]] = None) -> None:
    """The job's file fields: the command's required ones, no others, and eval data when a budget needs it."""
    required, optional = INPUTS[command]
    missing = sorted(required - names)
    if missing:
        raise RecipeError(f"{command} job: expected files {', '.join(sorted(required))}, found none for {', '.join(missing)}")
    extra = sorted(names - required - optional)
    if extra:
        raise RecipeError(f"{command} job: unexpected file field(s) {', '.join(extra)}")
    if (options or {}).get("max_drop") is not None and "eval" not in names:
        raise RecipeError(f"{command} job: max_drop needs the eval file: the drop is measured on evaluation data")
    if (options or {}).get("fallback") == "auto" and "eval" not in names:
        raise RecipeError(f"{command} job: fallback auto needs the eval file: the ladder measures every candidate on "
                          "evaluation data")


def suffix_for(field_name: str, filename: str) -> str:
    """The only part of a client's file name that is used: its suffix, from an allow-list."""
    allowed = MODEL_SUFFIXES if field_name == "model" else DATA_SUFFIXES
    suffix = PurePosixPath(filename or "").suffix.lower()
    if suffix not in allowed:
        raise RecipeError(problem(f"{field_name} upload {filename!r}", f"a file ending in {', '.join(allowed)}",
                                  f"{suffix or 'no suffix'!r}"))
    return suffix


def materialize(store, inputs: dict[str, dict[str, str]], folder: Path, *, limit: Optional[int] = None) -> dict[str, Path]:
    """Lay the job's inputs out under `folder` with fixed names: model.keras, calib.npz, ...

    A SavedModel `.zip` is unpacked, at most `limit` bytes of it.
    """
    paths = {}
    for field_name, entry in inputs.items():
        blob = store.blob(entry["sha256"])
        if not blob.is_file():
            raise ModelLoadError(problem(entry["name"], "an upload kept until its job ran", "it is gone from the store"))
        suffix = entry["suffix"]
        if suffix == ".zip":
            paths[field_name] = _unzip_saved_model(blob, folder / "saved_model", entry["name"], limit)
            continue
        target = folder / f"{field_name}{suffix}"
        target.symlink_to(blob)
        paths[field_name] = target
    return paths


def _unzip_saved_model(blob: Path, target: Path, name: str, limit: Optional[int]) -> Path:
    """Unpack member by member, counting what is written: a zip whose headers lie stops at `limit`."""
    expected = "a SavedModel folder as a .zip archive"
    written = 0
    try:
        with zipfile.ZipFile(blob) as archive:
            for member in archive.infolist():
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith("/") or ".." in parts or (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ModelLoadError(problem(name, "a zip of a SavedModel folder", f"an unsafe member {member.filename!r}"))
                path = target.joinpath(*parts)
                if member.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(path, "wb") as out:
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        if limit is not None and written > limit:
                            raise ModelLoadError(problem(name, f"a SavedModel of at most {limit / 2**20:g} MB unpacked",
                                                         "more"))
                        out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError, OSError) as exc:
        raise ModelLoadError(problem(name, expected, f"a damaged archive ({one_line(exc, 120)})")) from None
    found = sorted(p.parent for p in target.rglob("saved_model.pb"))
    if not found:
        raise ModelLoadError(problem(name, "a zip holding a SavedModel folder (with saved_model.pb)", "none"))
    return found[0]


def client_message(message: str, paths: dict[str, Path], inputs: dict[str, dict[str, str]]) -> str:
    """A message in the client's words: its upload names instead of the server's file paths."""
    for field_name, path in sorted(paths.items(), key=lambda item: -len(str(item[1]))):
        message = message.replace(str(path), inputs[field_name]["name"])
    return message


def public_report(report, paths: dict[str, Path], inputs: dict[str, dict[str, str]]):
    """The report with every server path (in the model name, warnings, tensor names...) in the client's words."""
    from ..types import Report

    def rename(value):
        if isinstance(value, str):
            return client_message(value, paths, inputs)
        if isinstance(value, list):
            return [rename(v) for v in value]
        if isinstance(value, dict):
            return {k: rename(v) for k, v in value.items()}
        return value

    return Report.from_dict(rename(report.to_dict()))


def run(command: str, options: dict[str, Any], paths: dict[str, Path], *, safe_mode: bool, num_threads=None):
    """Run the job's pipeline: the same calls, with the same spec, as the `tfquant` command."""
    from ..pipeline import quantize
    from ..spec import training_function

    spec = spec_of(command, options).replace(num_threads=num_threads)
    if command == "convert":
        return quantize(paths["model"], paths["calib"], eval_data=paths.get("eval"), spec=spec, safe_mode=safe_mode,
                        progress=False)
    return training_function(command)(paths["model"], paths["train"], calibration_data=paths.get("calib"), eval_data=paths.get("eval"),
                 spec=spec, safe_mode=safe_mode, progress=False)


def validate_inputs(command: str, options: dict[str, Any], paths: dict[str, Path], *, safe_mode: bool) -> None:
    """Load the model and check every data file against it: the errors the command gives, before queueing."""
    from ..optimize.training import check_trainable
    from ..prepare import prepare

    spec = spec_of(command, options)
    prepared = prepare(paths["model"], recipe=spec.recipe, calibration_data=paths.get("calib"),
                       eval_data=paths.get("eval"), train_data=paths.get("train") if command != "convert" else None,
                       safe_mode=safe_mode, export_model=False, input_shapes=getattr(spec, "input_shapes", None))
    if command != "convert":
        check_trainable(prepared.loaded, f"tfquant {command}")
