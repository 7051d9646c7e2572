"""What a person sees: a progress display on a terminal, nothing on stderr in a pipe, one JSON document
with --json, one line when interrupted. The command runs as a user runs it, in a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _in_terminal(args: list[str], cwd: Path, *, interrupt_after: str | None = None) -> tuple[int, str]:
    """Run `tfquant args` in a pseudo-terminal; return its exit code and what the terminal showed.

    With `interrupt_after`, Ctrl-C is sent (SIGINT to the foreground process group, as a terminal
    does) once that text has been shown."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, attached to the terminal
        os.chdir(cwd)
        os.environ.update({"PYTHONPATH": str(ROOT), "COLUMNS": "160", "TERM": "xterm"})
        os.execv(sys.executable, [sys.executable, "-m", "tfquant", *args])
    shown, interrupted = b"", False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the terminal closed: the command is done
                break
            if not chunk:
                break
            shown += chunk
        if interrupt_after and not interrupted and interrupt_after in _plain(shown):
            os.killpg(os.getpgid(pid), signal.SIGINT)
            interrupted = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), _plain(shown)


def _plain(raw: bytes) -> str:
    """The terminal's text without colours and cursor moves; each redraw on a line of its own."""
    return ANSI.sub("", raw.decode(errors="replace")).replace("\r", "\n")


def test_a_terminal_shows_every_step_then_the_summary(model_files, train_npz, test_npz, tmp_path):
    out = tmp_path / "out" / "m.tflite"
    code, shown = _in_terminal(["convert", str(model_files["keras"]), "--calib", str(train_npz), "--eval",
                                str(test_npz), "-o", str(out)], tmp_path)
    assert code == 0, shown
    lines = [line.strip() for line in shown.splitlines() if line.strip()]
    # The first thing on the screen is drawn by the command itself, before TensorFlow is imported.
    assert "starting TensorFlow" in lines[0]
    done = [line for line in lines if line.startswith("✓ ")]
    steps = [re.sub(r" \(\d+\.\d s\)$", "", line[2:]) for line in done]
    for expected in ("starting TensorFlow", "loading ", "exporting ", "calibrating on 200 samples",
                     "quantizing to int8", "evaluating the float32 file on 359 samples",
                     "evaluating the int8 file on 359 samples", "timing 2 file(s)", "writing "):
        assert any(step.startswith(expected) for step in steps), (expected, steps)
    assert steps.index("starting TensorFlow") == 0
    # Then the summary, after the last step.
    summary = shown.rindex("accuracy (top-1)")
    assert summary > shown.rindex("✓ writing") and "fully integer" in shown[summary:]
    assert out.exists()


def test_a_pipe_gets_the_summary_and_nothing_on_stderr(model_files, train_npz, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tfquant", "convert", str(model_files["keras"]), "--calib",
                           str(train_npz), "--calib-samples", "50", "-o", str(tmp_path / "m.tflite")], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "fully integer" in done.stdout and "✓" not in done.stdout


@pytest.fixture(scope="module")
def keras3_model(tmp_path_factory) -> dict[str, Path]:
    """A small Keras 3 model (its own export prints 'Saved artifact at ...' on stdout) and its data."""
    from tfquant._keras import keras3

    k = keras3()
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8), name="rows")
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(k.layers.GRU(16)(inputs)))
    folder = tmp_path_factory.mktemp("keras3")
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", rows=rng.random((40, 8, 8), np.float32))
    np.savez(folder / "eval.npz", rows=rng.random((40, 8, 8), np.float32), y=rng.integers(0, 10, 40))
    model.save(folder / "model.keras")
    return {"model": folder / "model.keras", "calib": folder / "calib.npz", "eval": folder / "eval.npz"}


def test_json_is_exactly_one_document_for_a_keras3_model(keras3_model, tmp_path):
    """--json in a pipe is quiet by itself (`-q` adds nothing): stdout holds the report, stderr nothing."""
    done = subprocess.run([sys.executable, "-m", "tfquant", "convert", str(keras3_model["model"]), "--calib",
                           str(keras3_model["calib"]), "--eval", str(keras3_model["eval"]), "--json",
                           "--bench-runs", "5", "-o", str(tmp_path / "m.tflite")], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # the whole of stdout, nothing before or after
    assert report["quantized"]["fully_integer"] is True
    assert done.stderr == ""


def test_ctrl_c_in_a_terminal_stops_with_one_line(model_files, train_npz, test_npz, tmp_path):
    out = tmp_path / "out" / "m.tflite"
    code, shown = _in_terminal(["convert", str(model_files["keras"]), "--calib", str(train_npz), "--eval",
                                str(test_npz), "-o", str(out)], tmp_path, interrupt_after="✓ exporting")
    assert code == 130, shown
    after = shown[shown.rindex("✓ exporting"):]
    assert "Traceback" not in shown and "KeyboardInterrupt" not in shown
    assert "tfquant convert: stopped by SIGINT; nothing was written" in after
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
