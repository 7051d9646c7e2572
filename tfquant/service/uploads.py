"""Uploads: a multipart body streamed to the blob store under limits, then checked by its headers.

Nothing here expands, decompresses or deserializes an upload. The body is parsed as it arrives
(chunked or not): each file part goes straight to a hashing temporary file, and the request is
refused the moment a part or the whole body passes its limit, so nothing past the limit is
spooled. Then `check_headers` reads only what a file says about itself — the zip directory of a
`.keras`, `.npz` or SavedModel `.zip` (member sizes, compression methods, names), the header of
every `.npy` array (dtype, shape), the HDF5 signature, a `.tflite` file's identifier, the header row of
a `.csv` — and refuses what would expand past the expanded-size limit. Loading the model and the
arrays happens in a separate process (`worker`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import AsyncIterator, Optional

import numpy as np

from ..errors import DataError, ModelLoadError, problem
from ..model_config import H5_SIGNATURE, TFLITE_EXPECTED, tflite_identifier_found

MAX_FIELD_BYTES = 64 << 10  # the recipe JSON and other text fields
MAX_PARTS = 8
MAX_ZIP_MEMBERS = 20_000
SUPPORTED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
NPY_SUFFIX = ".npy"
CSV_SUFFIX = ".csv"
CSV_HEADER_BYTES = 64 << 10


class TooLarge(Exception):
    """The body, a part, or what a file would expand to passed its limit."""

    def __init__(self, message: str, refused_bytes: int = 0):
        super().__init__(message)
        self.refused_bytes = refused_bytes


class BadRequest(Exception):
    """The body is not the multipart form the API takes."""


@dataclass(frozen=True)
class Limits:
    """Sizes in bytes: one uploaded file, the whole body, and what any file may expand to."""

    file_bytes: int
    body_bytes: int
    expanded_bytes: int

    @classmethod
    def from_mb(cls, max_upload_mb: float, expansion: float = 4.0) -> "Limits":
        size = int(max_upload_mb * 2**20)
        return cls(file_bytes=size, body_bytes=2 * size, expanded_bytes=int(expansion * size))


@dataclass
class Upload:
    """One file part, stored under a temporary name until the job is accepted."""

    field_name: str
    filename: str
    path: Path
    size: int = 0
    sha256: str = ""


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)

    def discard(self) -> None:
        for upload in self.files.values():
            with _suppress_missing():
                upload.path.unlink()


class _suppress_missing:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, FileNotFoundError)


class _Receiver:
    """python-multipart callbacks that write file parts to disk as they arrive, under the limits."""

    def __init__(self, folder: Path, limits: Limits):
        self.folder, self.limits = folder, limits
        self.form = Form()
        self.parts = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name: Optional[str] = None
        self._filename: Optional[str] = None
        self._text = bytearray()
        self._handle = None
        self._hash = None
        self._upload: Optional[Upload] = None

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
            "on_headers_finished")}

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BadRequest(f"expected at most {MAX_PARTS} form fields, found more")
        self._disposition, self._name, self._filename = b"", None, None
        self._text = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > MAX_FIELD_BYTES:
            raise BadRequest("expected multipart headers of a few hundred bytes, found a longer one")

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise BadRequest("expected a name in every part's Content-Disposition, found none")
        self._name = options[b"name"].decode("utf-8", "replace")[:64]
        if b"filename" in options:
            if self._name in self.form.files:
                raise BadRequest(f"expected one file per field, found two for {self._name!r}")
            self._filename = options[b"filename"].decode("utf-8", "replace")[:200]
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".upload-")
            self._handle = os.fdopen(fd, "wb")
            self._hash = hashlib.sha256()
            self._upload = Upload(self._name, self._filename, Path(tmp))
            self.form.files[self._name] = self._upload

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._upload is None:
            if len(self._text) + len(chunk) > MAX_FIELD_BYTES:
                raise TooLarge(f"field {self._name!r}: expected at most {MAX_FIELD_BYTES >> 10} KB, found more")
            self._text += chunk
            return
        self._upload.size += len(chunk)
        if self._upload.size > self.limits.file_bytes:
            raise TooLarge(f"upload {self._upload.filename!r}: expected at most {_mb(self.limits.file_bytes)} per file, "
                           "found more", self._upload.size)
        self._hash.update(chunk)
        self._handle.write(chunk)

    def on_part_end(self) -> None:
        if self._upload is None:
            self.form.fields[self._name] = self._text.decode("utf-8", "replace")
            return
        self._handle.close()
        self._upload.sha256 = self._hash.hexdigest()
        self._handle = self._hash = self._upload = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


async def receive(content_type: str, stream: AsyncIterator[bytes], folder: Path, limits: Limits) -> Form:
    """Parse a multipart body as it streams in; every file part lands in `folder` under a temporary name.

    Raises:
        TooLarge: a file or the whole body passed its limit (nothing beyond it was written).
        BadRequest: not multipart/form-data, or malformed.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise BadRequest(f"expected a multipart/form-data body, found {content_type or 'no Content-Type'!r}")
    receiver = _Receiver(folder, limits)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())
    total = 0
    try:
        async for chunk in stream:
            total += len(chunk)
            if total > limits.body_bytes:
                raise TooLarge(f"upload: expected a body of at most {_mb(limits.body_bytes)}, found more", total)
            parser.write(chunk)
        parser.finalize()
        if receiver._upload is not None or receiver.parts == 0:
            raise BadRequest("expected a complete multipart/form-data body, found it cut short")
    except FormParserError as exc:
        receiver.close()
        receiver.form.discard()
        raise BadRequest(f"expected a well-formed multipart/form-data body, found {exc}") from None
    except BaseException:
        receiver.close()
        receiver.form.discard()
        raise
    return receiver.form


def _mb(size: int) -> str:
    return f"{size / 2**20:g} MB"


# --- header checks -------------------------------------------------------------------------


def check_headers(path: Path, suffix: str, name: str, limits: Limits) -> None:
    """Refuse an upload by what its headers say, before anything expands it.

    Raises:
        TooLarge: the file would expand past `limits.expanded_bytes`.
        ModelLoadError / DataError: the file is not what its suffix says, or is damaged.
    """
    error = ModelLoadError if suffix in (".keras", ".h5", ".zip") else DataError
    if suffix == ".tflite":  # a flatbuffer, read in place: nothing to expand; the validator's interpreter verifies it
        with open(path, "rb") as handle:
            found = tflite_identifier_found(handle.read(8), path.stat().st_size)
        if found is not None:
            raise ModelLoadError(problem(name, TFLITE_EXPECTED, found))
        return
    if suffix == ".h5":
        with open(path, "rb") as handle:
            head = handle.read(len(H5_SIGNATURE))
        if head != H5_SIGNATURE:
            found = "a zip archive (rename it to .keras)" if head[:2] == b"PK" else \
                f"{path.stat().st_size} bytes that are not HDF5"
            raise ModelLoadError(problem(name, "an HDF5 Keras model", found))
        return
    if suffix == NPY_SUFFIX:
        with open(path, "rb") as handle:
            _npy_size(handle, name, path.stat().st_size, limits)
        return
    if suffix == CSV_SUFFIX:
        _csv_header(path, name, limits)
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        what = {".keras": "a .keras zip archive", ".zip": "a SavedModel folder as a .zip archive",
                ".npz": "a NumPy .npz archive"}[suffix]
        head = path.open("rb").read(len(H5_SIGNATURE))
        found = "an HDF5 file (rename it to .h5)" if suffix == ".keras" and head == H5_SIGNATURE else \
            f"{path.stat().st_size} bytes that are not a zip archive"
        raise error(problem(name, what, found)) from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise error(problem(name, f"a zip of at most {MAX_ZIP_MEMBERS:,} members", f"{len(members):,}"))
        expanded = 0
        for member in members:
            if member.compress_type not in SUPPORTED_COMPRESSION:
                raise error(problem(name, "zip members stored or deflated",
                                    f"compression method {member.compress_type} in {member.filename!r}"))
            if member.flag_bits & 0x1:
                raise error(problem(name, "an unencrypted zip", f"an encrypted member {member.filename!r}"))
            parts = PurePosixPath(member.filename).parts
            if member.filename.startswith("/") or ".." in parts or (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise error(problem(name, "a zip of plain relative paths", f"an unsafe member {member.filename!r}"))
            expanded += member.file_size
            if expanded > limits.expanded_bytes:
                raise TooLarge(f"upload {name!r}: expected contents of at most {_mb(limits.expanded_bytes)} "
                               f"when unpacked, found {expanded / 2**20:.1f} MB or more", expanded)
        if suffix == ".npz":
            for member in members:
                if not member.filename.endswith(NPY_SUFFIX):
                    raise DataError(problem(name, "a .npz archive of .npy arrays", f"a member {member.filename!r}"))
                try:
                    with archive.open(member) as handle:
                        _npy_size(handle, f"{name}:{member.filename}", member.file_size, limits)
                except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
                    raise DataError(problem(name, "a readable .npz archive", f"a damaged member ({exc})")) from None


def _csv_header(path: Path, name: str, limits: Limits) -> None:
    """A table's first line: UTF-8 text with a header row in its first 64 KB. Its cells become 8-byte
    floats as the rows stream by, at most 4x the file (each takes a character and a comma), and then
    the float32 copy the model takes, 2x more: a table may take 6x its size while it loads, within
    the expanded-size limit. The loader stops at its first bad cell."""
    size = path.stat().st_size
    if 6 * size > limits.expanded_bytes:
        raise TooLarge(f"upload {name!r}: expected a table of at most {_mb(limits.expanded_bytes // 6)}, "
                       f"found {size / 2**20:.1f} MB", size)
    with open(path, "rb") as handle:
        head = handle.read(CSV_HEADER_BYTES)
    first, newline, _ = head.partition(b"\n")
    if b"\0" in head:
        raise DataError(problem(name, "a CSV text file", "binary data (a NUL byte)"))
    try:
        first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(problem(name, "a CSV text file (UTF-8, comma-separated)", f"UnicodeDecodeError: {exc}")) from None
    if not newline and size > CSV_HEADER_BYTES:
        raise DataError(problem(name, f"a header row within the first {CSV_HEADER_BYTES // 1024} KB",
                                "no line break there"))


def _npy_size(handle, name: str, stored: int, limits: Limits) -> None:
    """Check an .npy header: a plain numeric dtype, a shape within the limit, and data that fits the file."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(handle, max_header_size=10_000)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = fmt.read_array_header_2_0(handle, max_header_size=10_000)
        else:
            raise ValueError(f"version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise DataError(problem(name, "a NumPy .npy array", f"an unreadable header ({exc})")) from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise DataError(problem(name, "numeric arrays", f"dtype {dtype} (object or structured data is not accepted)"))
    size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if size > limits.expanded_bytes:
        raise TooLarge(f"upload {name!r}: expected arrays of at most {_mb(limits.expanded_bytes)}, found shape "
                       f"{tuple(shape)} of {dtype} ({size / 2**20:.1f} MB)", size)
    if size > stored:
        raise DataError(problem(name, f"the {size:,} bytes of data its header announces", f"{stored:,} bytes"))
