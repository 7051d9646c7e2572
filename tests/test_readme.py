"""Every command and code block of the README runs as written after `make demo`, in order.

The demo itself (the Makefile's `demo` recipe, read from the Makefile) makes the working folder;
then each fenced block runs there:

- ```console: each `$ command` runs in bash; its exit code must be what the lines shown under it
  say (`tfquant X: error:` is 2, `tfquant X: failed:` is 1, anything else 0), and a shown error
  line must be the one printed, up to its numbers; `$ echo $?` shows the previous exit code;
- ```sh: the block runs as one bash script that must succeed;
- ```python: the block runs as a Python file that must succeed.

Blocks without a language are sample output. A block right after `<!-- not run by
tests/test_readme.py: why -->` is skipped, and says why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = "<!-- not run by tests/test_readme.py"
NUMBER = re.compile(r"\d[\d,.]*")


@dataclass
class Block:
    line: int
    language: str
    text: str


def blocks() -> list[Block]:
    found, lines = [], (ROOT / "README.md").read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("```") and line.strip() != "```":
            language, start = line[3:].strip(), index
            end = lines.index("```", index + 1)
            skipped = start > 0 and lines[start - 1].startswith(SKIP)
            if language in ("console", "sh", "python") and not skipped:
                found.append(Block(start + 1, language, "\n".join(lines[start + 1:end])))
            index = end
        index += 1
    return found


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """(command, the lines shown under it) of a console block; `\\` continues a command."""
    found: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                index += 1
                command = command[:-1] + " " + lines[index].strip()
            found.append((command, []))
        elif found:
            found[-1][1].append(line)
        index += 1
    return found


def _expected_code(shown: list[str]) -> int:
    if any(re.match(r"tfquant \w+: error: ", line) for line in shown):
        return 2
    if any(re.match(r"tfquant \w+: failed: ", line) for line in shown):
        return 1
    return 0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> dict:
    """A folder like the project's after `make demo`: data and scripts, and what the demo made in build/."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("data", "scripts"):
        (folder / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    recipe = _demo_recipe()
    assert recipe, "the Makefile has no demo recipe"
    ran = {}  # a README command the demo ran as written is not run again: the demo's run stands for it
    for command in recipe:
        done = subprocess.run(command, shell=True, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        ran[_words(command)] = done
    return {"folder": folder, "env": env, "last": 0, "ran": ran}


def _words(command: str) -> tuple[str, ...]:
    return tuple(command.split())


def _demo_recipe() -> list[str]:
    """The Makefile's `demo:` commands, with the venv's paths as they are in this run."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("demo:"))
    commands, current = [], ""
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        current += line.strip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        commands.append(current.replace("$(PY)", sys.executable).replace("$(VENV)/bin/", ""))
        current = ""
    return commands


BLOCKS = blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}-{b.language}" for b in BLOCKS])
def test_readme_block_runs_as_written(block: Block, workdir):
    folder, env = workdir["folder"], workdir["env"]
    if block.language == "python":
        script = folder / f"readme_{block.line}.py"
        script.write_text(block.text + "\n")
        done = subprocess.run([sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    if block.language == "sh":
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return
    for command, shown in _commands(block.text):
        if command.strip() == "echo $?":
            assert shown == [str(workdir["last"])], (command, shown)
            continue
        done = workdir["ran"].get(_words(command)) or subprocess.run(
            ["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        expected = _expected_code(shown)
        assert done.returncode == expected, f"$ {command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        workdir["last"] = done.returncode
        if expected:  # the error line shown is the one printed, numbers aside
            (line,) = [s for s in shown if re.match(r"tfquant \w+: (error|failed): ", s)]
            printed = done.stderr.strip().splitlines()
            assert len(printed) == 1, done.stderr
            assert NUMBER.sub("#", printed[0]) == NUMBER.sub("#", line), (printed[0], line)


def test_the_readme_has_blocks_to_run():
    """The parser found the README's blocks (an empty list would make the test above pass vacuously)."""
    assert len(BLOCKS) >= 10 and {b.language for b in BLOCKS} == {"console", "sh", "python"}
