"""Record what a person sees when `tfquant convert` runs in a terminal: `docs/convert.cast` and `docs/convert.svg`.

    python scripts/record_terminal.py   (after `make demo`; needs `pip install pyte`)

The command runs in a real pseudo-terminal (80 columns), exactly as the README's demo runs it.
Every chunk it writes is kept with its time as an asciinema v2 recording (`asciinema play
docs/convert.cast`, or any asciinema player), and the screen is replayed through a terminal
emulator (pyte) to draw two frames as one SVG: the display while the latency runs are under way,
and the screen when the command is done.
"""

from __future__ import annotations

import json
import os
import pty
import select
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS, ROWS = 100, 40
COMMAND = ["convert", "build/digits_cnn.keras", "--calib", "data/digits_train.npz", "--eval", "data/digits_test.npz",
           "--max-drop", "0.01", "-o", "build/record/digits_int8.tflite", "--overwrite"]


def record() -> list[tuple[float, str]]:
    """Run the command in a pseudo-terminal; every chunk it wrote, with the seconds since it started."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.environ.update({"COLUMNS": str(COLUMNS), "LINES": str(ROWS), "TERM": "xterm-256color"})
        os.execv(sys.executable, [sys.executable, "-m", "tfquant", *COMMAND])
    started, chunks = time.monotonic(), []
    while True:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the terminal closed: the command is done
            break
        if not chunk:
            break
        chunks.append((time.monotonic() - started, chunk.decode(errors="replace")))
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"tfquant {' '.join(COMMAND)} failed:\n" + "".join(text for _, text in chunks)[-2000:])
    return chunks


def screen_after(chunks: list[tuple[float, str]], *, until: float, pyte) -> list[str]:
    """The screen's lines once every chunk written up to `until` seconds has been drawn."""
    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.Stream(screen)
    for seconds, text in chunks:
        if seconds > until:
            break
        stream.feed(text.replace("\n", "\r\n"))
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def svg(frames: list[tuple[str, list[str]]]) -> str:
    """The frames one under the other as a terminal-looking SVG (monospace text on a dark panel)."""
    from xml.sax.saxutils import escape

    char_w, line_h, pad = 8.4, 18, 14
    width = int(COLUMNS * char_w + 2 * pad)
    parts, y = [], pad
    for title, lines in frames:
        height = (len(lines) + 1) * line_h + 2 * pad
        parts.append(f'<rect x="0" y="{y - pad}" width="{width}" height="{height}" rx="8" fill="#1e1e1e"/>')
        parts.append(f'<text x="{pad}" y="{y + line_h - 4}" fill="#8a8a8a">{escape(title)}</text>')
        for index, line in enumerate(lines, start=2):
            colour = "#7ec97e" if line.lstrip().startswith("✓") else "#e6e6e6"
            parts.append(f'<text x="{pad}" y="{y + index * line_h - 4}" fill="{colour}" xml:space="preserve">'
                         f"{escape(line)}</text>")
        y += height + 12
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y - 12 - pad}" '
            'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="14">\n'
            + "\n".join(parts) + "\n</svg>\n")


def main() -> None:
    import pyte

    if not (ROOT / "build" / "digits_cnn.keras").exists():
        sys.exit("build/digits_cnn.keras: expected the demo model, found nothing; run `make demo` first")
    chunks = record()
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    header = {"version": 2, "width": COLUMNS, "height": ROWS, "timestamp": int(time.time()),
              "title": "tfquant " + " ".join(COMMAND)}
    with open(docs / "convert.cast", "w") as cast:
        cast.write(json.dumps(header) + "\n")
        for seconds, text in chunks:
            cast.write(json.dumps([round(seconds, 3), "o", text]) + "\n")
    # The latency runs under way (the longest step of this small model), and the end.
    drawn = [seconds for seconds, text in chunks if "━" in text and "timing" in text] or [chunks[-1][0]]
    during = drawn[len(drawn) // 2]
    end = chunks[-1][0]
    frames = [(f"$ tfquant {' '.join(COMMAND[:2])} …   ({during:.1f} s in)", screen_after(chunks, until=during, pyte=pyte)),
              (f"… done ({end:.1f} s)", screen_after(chunks, until=end, pyte=pyte))]
    (docs / "convert.svg").write_text(svg(frames))
    print(f"docs/convert.cast: {len(chunks)} chunks over {end:.1f} s; docs/convert.svg: 2 frames")


if __name__ == "__main__":
    main()
