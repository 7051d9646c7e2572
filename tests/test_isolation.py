"""The console command as a user runs it: a child that crashes or is interrupted never leaves a
dead process, a traceback or a partial file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tfquant", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _wait_for_child_importing_tensorflow(parent: subprocess.Popen) -> int:
    """The watched child's PID, once it has imported TensorFlow (the work has begun)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for pid in _children(parent.pid):
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if "_pywrap_tensorflow_internal" in maps:
                return pid
        assert parent.poll() is None, parent.communicate()
        time.sleep(0.05)
    raise AssertionError("the command never started a child that imports TensorFlow")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("signum, code, words", [
    (signal.SIGINT, 130, "stopped by SIGINT; nothing was written"),
    (signal.SIGTERM, 143, "stopped by SIGTERM; nothing was written"),
])
def test_interrupt_stops_at_once_and_writes_nothing(signum, code, words, model_files, train_npz, tmp_path):
    out = tmp_path / "out" / "m.tflite"
    proc = _start(["convert", str(model_files["keras"]), "--calib", str(train_npz), "-o", str(out)], tmp_path)
    child = _wait_for_child_importing_tensorflow(proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code
    lines = err.strip().splitlines()
    assert lines[-1] == f"tfquant convert: {words}"
    assert "Traceback" not in err
    assert not _alive(child)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_native_crash_becomes_one_line_exit_2(model_files, train_npz, tmp_path):
    out = tmp_path / "m.tflite"
    proc = _start(["convert", str(model_files["keras"]), "--calib", str(train_npz), "-o", str(out), "-q"], tmp_path)
    child = _wait_for_child_importing_tensorflow(proc)
    os.kill(child, signal.SIGSEGV)  # what a converter bug does to the process
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tfquant convert: error: {model_files['keras']}: expected a model TensorFlow Lite's "
                               "native code can process, found a crash (SIGSEGV)")
    assert "nothing was written" in lines[0]
    assert list(tmp_path.glob("*.tflite")) == [] and list(tmp_path.glob(".*.part")) == []


@pytest.mark.parametrize("args, message", [
    (["convert", "m.keras", "--calib", "c.npz", "--fallback", "auto", "-o", "o.tflite"], "--fallback auto needs --eval"),
    (["convert", "m.keras", "--calib", "c.npz", "--max-drop", "0.01", "-o", "o.tflite"], "--max-drop needs --eval"),
    (["qat", "m.keras", "--train", "t.npz", "--epochs", "0", "-o", "o.tflite"],
     "argument --epochs: expected a whole number at least 1, found 0"),
    (["qat", "m.keras", "--train", "t.npz", "--epochs", "1", "--lr", "nan", "-o", "o.tflite"],
     "argument --lr: expected a number above 0, found nan"),
    (["qat", "m.keras", "--train", "t.npz", "--epochs", "1", "--lr", "-1", "-o", "o.tflite"],
     "argument --lr: expected a number above 0, found -1"),
    (["prune", "m.keras", "--train", "t.npz", "--epochs", "1", "--sparsity", "1", "-o", "o.tflite"],
     "argument --sparsity: expected a number between 0 and 1 (exclusive), found 1"),
    (["convert", "m.keras", "-o", "o.tflite"], "--mode int8 needs calibration data: pass --calib DATA"),
    (["convert", "m.keras", "--calib", "c.npz", "--mode", "int16x8", "--io", "uint8", "-o", "o.tflite"],
     "--io uint8 does not go with --mode int16x8"),
])
def test_usage_errors_come_before_tensorflow_is_imported(args, message, tmp_path):
    code = ("import sys\nfrom tfquant import cli\nsys.argv = ['tfquant', *sys.argv[1:]]\n"
            "try:\n    cli.run()\nexcept SystemExit as e:\n"
            "    print(e.code, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.stdout.split() == ["2", "False", "False"]
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
