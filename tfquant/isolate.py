"""The `tfquant` command runs its heavy work in a child process, so that nothing kills the user's shell session badly.

TensorFlow's converter, calibrator and interpreter are native code: on some graphs they abort
or segfault, which no `try` can catch. The console entry point therefore parses the command line
itself (usage errors come at once, before TensorFlow is imported), then runs the command in a
child process that it watches:

- a child killed by a signal becomes one line naming the model, the signal and the stage the
  child had reached, with exit code 2;
- Ctrl-C or `kill -INT`/`-TERM` of the command stops the child at once, removes any partly
  written output, prints one line and exits 130 (143 for SIGTERM);
- the child dies with the command (parent-death signal), so it is never left running.

Outputs are written by the child whole or not at all (`files.write_all`); what a killed child
left half-written is swept here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

CHILD = "TFQUANT_CHILD"
STAGE_FILE = "TFQUANT_STAGE_FILE"
EXIT_FOR = {signal.SIGINT: 130, signal.SIGTERM: 143}


def in_child() -> bool:
    return os.environ.get(CHILD) == "1"


def record_stage(message: str) -> None:
    """In the child: remember the step under way, for the message if native code kills the process."""
    path = os.environ.get(STAGE_FILE)
    if path:
        try:
            Path(path).write_text(message[:300])
        except OSError:
            pass


def start_child() -> None:
    """In the child: die with the parent command."""
    if in_child():
        from .service.processes import PR_SET_PDEATHSIG

        try:
            import ctypes

            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - not Linux
            pass


def run_isolated(command: str, argv: list[str], *, model: Optional[str], outputs: list[Path],
                 display: bool = False) -> int:
    """Run `tfquant argv` in a child process and return the exit code the command should give.

    With `display`, this process draws the progress display: at once a step for the child's start
    (TensorFlow's import), then every step the child sends through a pipe. The child's stdout and
    stderr are then read here and written out as lines above the display (its summary after it),
    so that nothing the child prints tears the display.
    """
    from . import console

    with tempfile.TemporaryDirectory(prefix="tfquant-") as tmp:
        stage = Path(tmp) / "stage"
        env = {**os.environ, CHILD: "1", STAGE_FILE: str(stage)}
        shown = console.Display() if display else None
        read_end = write_end = None
        if shown is not None:
            read_end, write_end = os.pipe()
            env[console.PROGRESS_FD] = str(write_end)
        child = subprocess.Popen([sys.executable, "-m", "tfquant", *argv], env=env, start_new_session=True,
                                 pass_fds=() if write_end is None else (write_end,),
                                 stdout=subprocess.PIPE if shown else None, stderr=subprocess.PIPE if shown else None)
        caught: list[int] = []

        def stop(signum, frame):
            caught.append(signum)
            _kill(child)

        previous = {s: signal.signal(s, stop) for s in EXIT_FOR}
        summary: list[bytes] = []
        try:
            if shown is None:
                code = child.wait()
            else:
                os.close(write_end)
                code = _watch(child, shown, read_end, summary)
            while child.poll() is None:  # pragma: no cover - wait() returned early on a signal
                time.sleep(0.01)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if shown is not None:
                shown.close()
        if summary:
            sys.stdout.buffer.write(b"".join(summary))
            sys.stdout.flush()
        last = stage.read_text().strip() if stage.exists() else ""
    if caught:
        _sweep(outputs)
        name = signal.Signals(caught[0]).name
        print(f"tfquant {command}: stopped by {name}; nothing was written", file=sys.stderr)
        return EXIT_FOR[caught[0]]
    if code >= 0:
        return code
    _sweep(outputs)
    name = signal.Signals(-code).name
    where = model or "the model"
    during = f" while {last}" if last else ""
    print(f"tfquant {command}: error: {where}: expected a model TensorFlow Lite's native code can process, found a "
          f"crash ({name}){during}; nothing was written. Try --mode float32 or --fallback auto to see which ops "
          "convert, or `tfquant diagnose`", file=sys.stderr)
    return 2


def _watch(child: subprocess.Popen, shown, events: int, summary: list[bytes]) -> int:
    """Draw the child's steps until it exits; its stderr lines go above the display, its stdout is kept."""
    import threading

    from . import console

    shown.__enter__()
    shown.start(0, "starting TensorFlow", None)
    started = [False]

    def read_events() -> None:
        with os.fdopen(events, "r") as pipe:
            for line in pipe:
                if not started[0]:
                    started[0] = True
                    shown.finish(0)
                console.replay(line, shown)

    def read_stderr() -> None:
        for line in child.stderr:
            shown.say(line.decode(errors="replace").rstrip("\n"))

    def read_stdout() -> None:
        summary.append(child.stdout.read())

    readers = [threading.Thread(target=f, daemon=True) for f in (read_events, read_stderr, read_stdout)]
    for reader in readers:
        reader.start()
    code = child.wait()
    for reader in readers:
        reader.join(timeout=5)
    return code


def _kill(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep(outputs: list[Path]) -> None:
    """Remove the temporary files a killed child left beside the outputs (`.NAME.*.part`)."""
    for path in outputs:
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            continue
        for stale in folder.glob(f".{path.name}.*.part"):
            try:
                stale.unlink()
            except OSError:
                pass
