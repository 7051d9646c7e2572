"""What a person sees while tfquant works: one progress display on a terminal, silence elsewhere.

Library code marks every long step with `step()` (a spinner, or a bar when it knows its total)
and `track()` (a bar over an iterable: calibration samples, evaluation batches, benchmark runs,
training batches). Each step is also logged at INFO, so the service turns steps into a job's
stage and a crash report names the step it happened in.

Who draws:

- the `tfquant` command on a terminal, unless `-q` or `--json`: a `rich` progress display on
  stderr, finished steps left as one line each with their time;
- the command's watched child process (`tfquant.isolate`) draws nothing: it sends its steps as
  JSON lines through a pipe, and the parent, which never imports TensorFlow, draws them (so the
  first line is on the screen within a second of pressing Enter);
- anywhere else (pipes, `-q`, `--json`, Python callers, the service): nothing is drawn.

Native code that writes to file descriptor 2 (TensorFlow's banner, the interpreter's "Created
TensorFlow Lite XNNPACK delegate" notice) runs inside `captured_stderr()`, so stderr holds only
what tfquant means to say.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Any, Iterable, Iterator, Optional, Protocol

log = logging.getLogger("tfquant")
PROGRESS_FD = "TFQUANT_PROGRESS_FD"  # the child's end of the pipe to the drawing parent
_IDS = itertools.count(1)


class Sink(Protocol):
    def start(self, ident: int, text: str, total: Optional[int]) -> None: ...

    def advance(self, ident: int, by: int) -> None: ...

    def finish(self, ident: int) -> None: ...

    def warn(self, text: str) -> None: ...

    def note(self, text: str) -> None: ...


_sink: Optional[Sink] = None


@contextlib.contextmanager
def showing(sink: Optional[Sink]) -> Iterator[None]:
    """Send steps to `sink` (a display, a pipe) inside the block."""
    global _sink
    previous, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = previous


def active() -> bool:
    """Whether someone is watching the steps (and Keras should keep its own progress to itself)."""
    return _sink is not None


class Step:
    """A step under way: `advance()` moves its bar."""

    def __init__(self, ident: int, sink: Optional[Sink]):
        self.ident, self._sink = ident, sink

    def advance(self, by: int = 1) -> None:
        if self._sink is not None:
            self._sink.advance(self.ident, by)


@contextlib.contextmanager
def step(text: str, *, total: Optional[int] = None) -> Iterator[Step]:
    """A long step: logged, and drawn where someone watches. `total` gives it a bar."""
    log.info("%s", text)
    ident, sink = next(_IDS), _sink
    if sink is not None:
        sink.start(ident, text, total)
    try:
        yield Step(ident, sink)
    finally:
        if sink is not None:
            sink.finish(ident)


def track(items: Iterable[Any], text: str, *, total: Optional[int] = None) -> Iterator[Any]:
    """`items` one by one, as a step whose bar advances with each."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with step(text, total=total) as current:
        for item in items:
            yield item
            current.advance()


def note(text: str) -> None:
    """A result worth a line of its own on the display (a ladder candidate's verdict, a choice made)."""
    log.info("%s", text)
    if _sink is not None:
        _sink.note(text)


def warn(text: str) -> None:
    """A warning: logged (and so in the command's display); reports carry it too."""
    log.warning("%s", text)


# --- sinks -----------------------------------------------------------------------------------


class PipeSink:
    """In the command's child: every step as a JSON line to the parent, which draws it."""

    def __init__(self, fd: int):
        self._out = os.fdopen(fd, "w", buffering=1)
        self._lock = threading.Lock()

    def _send(self, **event: Any) -> None:
        with self._lock:
            try:
                self._out.write(json.dumps(event) + "\n")
            except (BrokenPipeError, OSError):  # the parent is gone: the child is about to be killed
                pass

    def start(self, ident: int, text: str, total: Optional[int]) -> None:
        self._send(kind="start", id=ident, text=text, total=total)

    def advance(self, ident: int, by: int) -> None:
        self._send(kind="advance", id=ident, by=by)

    def finish(self, ident: int) -> None:
        self._send(kind="finish", id=ident)

    def warn(self, text: str) -> None:
        self._send(kind="warn", text=text)

    def note(self, text: str) -> None:
        self._send(kind="note", text=text)


def replay(line: str, sink: Sink) -> None:
    """One event from the child's pipe, drawn by the parent's display."""
    try:
        event = json.loads(line)
    except ValueError:
        return
    kind = event.get("kind")
    if kind == "start":
        sink.start(event["id"], event["text"], event.get("total"))
    elif kind == "advance":
        sink.advance(event["id"], event.get("by", 1))
    elif kind == "finish":
        sink.finish(event["id"])
    elif kind == "warn":
        sink.warn(event["text"])
    elif kind == "note":
        sink.note(event["text"])


class Display:
    """A `rich` progress display on stderr: live steps with a spinner (and a bar when the total is
    known), each finished step left as one line with its time, warnings printed above."""

    def __init__(self, stream=None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self.console = Console(file=stream or sys.stderr, highlight=False, soft_wrap=True)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                                 TaskProgressColumn(), TimeElapsedColumn(), console=self.console, transient=True)
        self._tasks: dict[int, tuple[Any, str, float]] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> "Display":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for ident in list(self._tasks):
                self._end(ident, done=False)
            self.progress.stop()

    def start(self, ident: int, text: str, total: Optional[int]) -> None:
        with self._lock:
            task = self.progress.add_task(text, total=total)
            self._tasks[ident] = (task, text, time.monotonic())

    def advance(self, ident: int, by: int) -> None:
        with self._lock:
            if ident in self._tasks:
                self.progress.advance(self._tasks[ident][0], by)

    def finish(self, ident: int) -> None:
        with self._lock:
            self._end(ident, done=True)

    def _end(self, ident: int, *, done: bool) -> None:
        task, text, started = self._tasks.pop(ident, (None, "", 0.0))
        if task is None:
            return
        self.progress.remove_task(task)
        if done:
            self.console.print(f"[green]✓[/green] {_escape(text)} [dim]({time.monotonic() - started:.1f} s)[/dim]")

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {_escape(text)}")

    def note(self, text: str) -> None:
        self.console.print(f"  {_escape(text)}")

    def say(self, text: str) -> None:
        """A line of the command's own (an error, a child's stderr line), printed above the steps."""
        self.console.print(_escape(text))


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def wants_display(*, quiet: bool, json_output: bool, stream=None) -> bool:
    """A display only for a person at a terminal: not in pipes, not with -q or --json."""
    stream = stream or sys.stderr
    return not quiet and not json_output and hasattr(stream, "isatty") and stream.isatty() \
        and os.environ.get("TERM") != "dumb"


# --- native chatter -------------------------------------------------------------------------


class CapturedStderr:
    """What native code wrote to file descriptor 2 inside `captured_stderr()`."""

    def __init__(self, handle):
        self._handle = handle
        self.text = ""

    def read(self) -> str:
        self._handle.flush()
        self._handle.seek(0)
        self.text = self._handle.read().decode(errors="replace")
        return self.text


@contextlib.contextmanager
def captured_stderr() -> Iterator[CapturedStderr]:
    """Capture what C++ code writes to fd 2 (TensorFlow's import banner, the converter's log, the
    interpreter's delegate notice). Python's `sys.stderr` is not enough: native code writes to the
    descriptor directly."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as handle:
        saved = os.dup(2)
        os.dup2(handle.fileno(), 2)
        captured = CapturedStderr(handle)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.read()
