"""Fuzzing: the API against its own OpenAPI schema, and the data and model loaders against odd bytes."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serving import AUTH

from tfquant.errors import TfquantError

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_every_response_is_4xx_or_better_and_matches_the_schema(server):
    """No 5xx, and every answer is one the schema declares, with the declared body, for generated requests."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/jobs", "GET /v1/jobs", "GET /v1/jobs/{job_id}", "GET /v1/jobs/{job_id}/artifacts/{name}",
        "DELETE /v1/jobs/{job_id}", "GET /healthz", "GET /metrics"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case):
            case.call_and_validate(base_url=server.url, headers=AUTH, checks=CHECKS, timeout=60)

        call()


@given(st.binary(max_size=2048))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_loaders_raise_only_typed_errors_on_any_bytes(tmp_path_factory, data):
    from tfquant.data import load_data
    from tfquant.models import load_model
    from tfquant.service.uploads import Limits, check_headers
    from tfquant.types import TensorSpec

    folder = tmp_path_factory.mktemp("fuzz")
    spec = [TensorSpec("image", (None, 8, 8, 1), "float32")]
    for suffix in (".npz", ".npy", ".csv", ".keras", ".h5", ".zip"):
        path = folder / f"blob{suffix}"
        path.write_bytes(data)
        loaders = [lambda: check_headers(path, suffix, path.name, Limits.from_mb(1))]
        if suffix in (".npz", ".npy", ".csv"):
            loaders.append(lambda: load_data(path, spec))
        elif suffix != ".zip":
            loaders.append(lambda: load_model(path))
        for load in loaders:
            try:
                load()
            except TfquantError:
                pass
            except Exception as exc:  # the service maps TooLarge to 413 itself
                assert type(exc).__name__ == "TooLarge", f"{suffix}: {type(exc).__name__}: {exc}"


def test_a_csv_upload_is_checked_by_its_first_line(tmp_path):
    import pytest

    from tfquant.errors import DataError
    from tfquant.service.uploads import CSV_HEADER_BYTES, Limits, TooLarge, check_headers

    limits = Limits.from_mb(1)
    cases = {"nul.csv": (b"a,b\n1,\x002\n", r"nul.csv: expected a CSV text file, found binary data \(a NUL byte\)"),
             "latin.csv": ("\xe2ge,b\n1,2\n".encode("latin-1"), r"latin.csv: expected a CSV text file \(UTF-8, comma-separated\), "
                                                                  r"found UnicodeDecodeError"),
             "long.csv": (b"a" * (CSV_HEADER_BYTES + 10), r"long.csv: expected a header row within the first 64 KB, "
                                                           r"found no line break there")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=message):
            check_headers(tmp_path / name, ".csv", name, limits)
    (tmp_path / "ok.csv").write_bytes("\ufeffâge,y\n1,2\n".encode("utf-8"))
    check_headers(tmp_path / "ok.csv", ".csv", "ok.csv", limits)
    (tmp_path / "big.csv").write_bytes(b"a,y\n" + b"1,2\n" * 100_000)  # 400 KB: up to 2.4 MB while it loads
    with pytest.raises(TooLarge, match=r"upload 'big.csv': expected a table of at most 0.166666 MB, found 0.4 MB"):
        check_headers(tmp_path / "big.csv", ".csv", "big.csv", Limits(1 << 20, 2 << 20, 1 << 20))
