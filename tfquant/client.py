"""A client for the converter service (`tfquant serve`).

Example:
    >>> from tfquant.client import Client
    >>> client = Client("http://127.0.0.1:8080", token="...")                       # doctest: +SKIP
    >>> job = client.submit("digits.keras", calib="calib.npz", eval="test.npz", max_drop=0.01)
    >>> client.wait(job)["status"]
    'succeeded'
    >>> client.download(job, "digits_int8.tflite")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from .errors import OutputError, ServiceError, called

FIELDS = ("model", "calib", "eval", "train")


def _upload(field: str, path: Path) -> tuple[str, Any]:
    """(the name it is sent as, an open handle) for one file of a submission; a SavedModel folder is sent
    as the .zip the service takes."""
    import tempfile
    import zipfile

    from .errors import DataError, ModelLoadError, problem

    error, expected = (ModelLoadError, "a .keras, .h5 or float32 .tflite file, or a SavedModel folder") \
        if field == "model" else (DataError, "an .npz, .npy or .csv file (the service takes no image folder: "
                                             "save the images as an .npz)")
    if path.is_dir() and field == "model" and (path / "saved_model.pb").is_file():
        handle = tempfile.TemporaryFile()
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for member in sorted(path.rglob("*")):
                if member.is_file():
                    archive.write(member, member.relative_to(path))
        handle.seek(0)
        return f"{path.name}.zip", handle
    if not path.is_file():
        raise error(problem(path, expected, "a folder" if path.is_dir() else "no such file"))
    return path.name, open(path, "rb")


class Client:
    """Submit jobs, follow them and fetch their files. Every call raises `ServiceError` with the server's message."""

    def __init__(self, url: str = "http://127.0.0.1:8080", token: Optional[str] = None, *, timeout: float = 120.0):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method: str, path: str, **kwargs):
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"{self._http.base_url}: expected a tfquant service, found {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServiceError(f"{response.status_code}: {detail}", response.status_code)
        return response

    def submit(self, model: str | Path, *, command: str = "convert", calib=None, eval=None, train=None, **options: Any) -> str:
        """Upload the files and the options (the command's option names); returns the job id."""
        import json

        paths = {"model": model, "calib": calib, "eval": eval, "train": train}
        files: dict[str, tuple] = {}
        try:
            for field, value in paths.items():
                if value is not None:
                    files[field] = _upload(field, Path(value))
            recipe = json.dumps({"command": command, **{k: v for k, v in options.items() if v is not None}})
            return self._call("POST", "/v1/jobs", files=files, data={"recipe": recipe}).json()["id"]
        finally:
            for _, handle in files.values():
                handle.close()

    def ready(self, *, timeout: float = 60.0, poll: float = 0.25) -> dict[str, Any]:
        """Wait until the service answers /healthz (a server just started); returns its health."""
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            try:
                response = self._http.get("/healthz")
                if response.status_code == 200:
                    return response.json()
                found = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                found = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ServiceError(f"{self._http.base_url}: expected a tfquant service answering within {timeout:g} s, "
                                   f"found {found}")
            time.sleep(poll)

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def list(self, *, limit: int = 50, offset: int = 0, status: Optional[str] = None) -> dict[str, Any]:
        params = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
        return self._call("GET", "/v1/jobs", params=params).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, *, timeout: Optional[float] = None, poll: float = 0.5, progress: Optional[bool] = None) -> dict[str, Any]:
        """Poll until the job is final; the job's progress and stages on the command's display. Returns the final status."""
        import contextlib

        from . import console

        deadline = None if timeout is None else time.monotonic() + timeout
        shown = console.step(f"job {job_id[:8]}", total=100) if progress is not False else \
            contextlib.nullcontext(console.Step(0, None))
        with shown as bar:
            done, stage = 0, ""
            while True:
                state = self.status(job_id)
                percent = int(100 * state.get("progress", 0))
                if percent > done:
                    bar.advance(percent - done)
                    done = percent
                if progress is not False and state.get("stage") and state["stage"] != stage:
                    stage = state["stage"]
                    console.note(f"job {job_id[:8]}: {stage[:120]}")
                if state["status"] in ("succeeded", "failed", "cancelled"):
                    return state
                if deadline is not None and time.monotonic() > deadline:
                    raise ServiceError(f"job {job_id}: expected a final status within {timeout:g} s, found {state['status']}")
                time.sleep(poll)

    def download(self, job_id: str, path: str | Path, *, artifact: str = "model.tflite", overwrite: bool = False) -> Path:
        """Fetch one artifact to `path`, written whole or not at all."""
        from .files import write_all

        path = Path(path)
        if path.exists() and not overwrite:
            raise OutputError(f"{path}: expected a path that does not exist yet (or {called('overwrite')}), found an existing file")
        data = self._call("GET", f"/v1/jobs/{job_id}/artifacts/{artifact}").content
        write_all({path: data}, overwrite=overwrite)
        return path
