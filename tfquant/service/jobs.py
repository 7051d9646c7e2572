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

from ..errors import ModelLoadError, RecipeError, problem
from ..types import Recipe

MODEL_SUFFIXES = (".keras", ".h5", ".zip")
DATA_SUFFIXES = (".npz", ".npy")

_COMMON = {"io": str, "calib_samples": int, "max_drop": float, "strict": bool}
_TRAINING = {**_COMMON, "epochs": int, "batch_size": int, "lr": float}
OPTIONS: dict[str, dict[str, type]] = {
    "convert": {**_COMMON, "mode": str, "quantizer": str, "fallback": str, "recipe": dict},
    "qat": {**_TRAINING, "keep_best": bool},
    "prune": {**_TRAINING, "sparsity": float, "schedule": str, "block": str, "then": str, "qat_epochs": int},
}
INPUTS = {
    "convert": ({"model", "calib"}, {"eval"}),
    "qat": ({"model", "train"}, {"calib", "eval"}),
    "prune": ({"model", "train"}, {"calib", "eval"}),
}
REQUIRED_OPTIONS = {"convert": (), "qat": ("epochs",), "prune": ("epochs", "sparsity")}


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """The submitted JSON recipe -> (command, options), checked like the command checks its flags."""
    try:
        spec = json.loads(text or "{}")
    except ValueError as exc:
        raise RecipeError(f"recipe: expected a JSON object, found invalid JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise RecipeError(f"recipe: expected a JSON object, found {type(spec).__name__}")
    spec = dict(spec)
    command = spec.pop("command", "convert")
    if command not in OPTIONS:
        raise RecipeError(f"recipe: unknown command {command!r}; expected one of: {', '.join(OPTIONS)}")
    allowed = OPTIONS[command]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise RecipeError(f"recipe: unknown option(s) {', '.join(unknown)} for {command}; expected some of: "
                          f"{', '.join(sorted(allowed))}")
    for key, kind in allowed.items():
        value = spec.get(key)
        if value is None:
            continue
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, spec[key] = True, float(value)
        if not ok:
            raise RecipeError(f"recipe: {key}: expected {kind.__name__}, found {value!r}")
    for key in REQUIRED_OPTIONS[command]:
        if key not in spec:
            raise RecipeError(f"recipe: {command} needs {key!r}")
    recipe_of(command, spec)  # mode/io combinations, calib_samples range
    return command, spec


def recipe_of(command: str, options: dict[str, Any]) -> Recipe:
    if command == "convert" and options.get("recipe") is not None:
        return Recipe.from_dict(options["recipe"])
    return Recipe(mode=options.get("mode", "int8"), io=options.get("io"), calib_samples=options.get("calib_samples", 200),
                  quantizer=options.get("quantizer", "converter"))


def check_inputs(command: str, names: set[str]) -> None:
    required, optional = INPUTS[command]
    missing = sorted(required - names)
    if missing:
        raise RecipeError(f"{command} job: expected files {', '.join(sorted(required))}, found none for {', '.join(missing)}")
    extra = sorted(names - required - optional)
    if extra:
        raise RecipeError(f"{command} job: unexpected file field(s) {', '.join(extra)}")


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
        raise ModelLoadError(problem(name, expected, f"a damaged archive ({' '.join(str(exc).split())[:120]})")) from None
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
    """Run the job's pipeline: the same calls, with the same arguments, as the `tfquant` command."""
    from ..optimize.prune import prune
    from ..optimize.qat import qat
    from ..pipeline import quantize

    if command == "convert":
        return quantize(paths["model"], paths["calib"], eval_data=paths.get("eval"), max_drop=options.get("max_drop"),
                        fallback=options.get("fallback", "off"), strict=options.get("strict", False),
                        recipe=recipe_of(command, options), num_threads=num_threads, safe_mode=safe_mode, progress=False)
    training = dict(
        epochs=options["epochs"], calibration_data=paths.get("calib"), eval_data=paths.get("eval"),
        batch_size=options.get("batch_size", 32), io=options.get("io"), calib_samples=options.get("calib_samples", 200),
        max_drop=options.get("max_drop"), strict=options.get("strict", False), num_threads=num_threads,
        safe_mode=safe_mode, progress=False,
    )
    if command == "qat":
        return qat(paths["model"], paths["train"], learning_rate=options.get("lr", 1e-4),
                   keep_best=options.get("keep_best", False), **training)
    return prune(paths["model"], paths["train"], sparsity=options["sparsity"], schedule=options.get("schedule", "polynomial"),
                 block=options.get("block"), then=options.get("then", "ptq"), qat_epochs=options.get("qat_epochs"),
                 learning_rate=options.get("lr", 1e-3), **training)


def validate_inputs(command: str, options: dict[str, Any], paths: dict[str, Path], *, safe_mode: bool) -> None:
    """Load the model and check every data file against it: the errors the command gives, before queueing."""
    from ..prepare import prepare

    recipe = recipe_of(command, options)
    prepare(paths["model"], recipe=recipe, calibration_data=paths.get("calib"), eval_data=paths.get("eval"),
            train_data=paths.get("train") if command != "convert" else None, safe_mode=safe_mode, export_model=False)
