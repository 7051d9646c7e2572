"""Where every bench's results go: bench/NAME.json, bench/NAME.md and the README's table."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"


def publish(name: str, data: dict, table: str, *, marker: str | None = None, readme: bool = True) -> None:
    """Write `data` to bench/NAME.json and `table` to bench/NAME.md and, with `readme`, into README.md
    between `<!-- MARKER:start -->` and `<!-- MARKER:end -->` (MARKER defaults to NAME)."""
    (HERE / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (HERE / f"{name}.md").write_text(table)
    if readme:
        update_readme(marker or name, table)


def update_readme(marker: str, table: str) -> None:
    """Put `table` between the README's `marker` comments (nothing happens where they are missing)."""
    text = README.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        README.write_text(f"{head}{start}\n{table}{end}{rest.split(end, 1)[1]}")
