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


def publish_rows(name: str, rows: list[dict], markdown, *, only, merge: bool, key, **extra) -> None:
    """The end of a bench over rows: with `merge`, keep the rows of bench/NAME.json this run did not redo
    (matched by `key(row)`); then write the rows with this machine's environment (and `extra`) and
    `markdown(rows, environment)`'s table, into the README too unless only some rows ran without `merge`."""
    from bench.run import environment

    if merge:
        rows = merged(name, rows, key=key)
    env = environment()
    table = markdown(rows, env)
    publish(name, {"environment": env, **extra, "rows": rows}, table, readme=not only or merge)
    print(table)


def update_readme(marker: str, table: str) -> None:
    """Put `table` between the README's `marker` comments (nothing happens where they are missing)."""
    text = README.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        README.write_text(f"{head}{start}\n{table}{end}{rest.split(end, 1)[1]}")


def merged(name: str, rows: list[dict], key) -> list[dict]:
    """`rows` in place of the rows of bench/NAME.json with the same `key(row)`, the others kept in their order
    (new keys at the end)."""
    path = HERE / f"{name}.json"
    if not path.exists():
        return rows
    fresh = {key(r): r for r in rows}
    earlier = json.loads(path.read_text())["rows"]
    kept = [fresh.pop(key(r), r) for r in earlier]
    return kept + list(fresh.values())


def dates_note(rows: list[dict], today: str, unknown: str, machine: str = "") -> list[str]:
    """Lines that say which rows were measured on another day than `today` (`unknown`: rows without a date),
    and on which machine where a row names another than `machine`.

    A model is named with its Keras version where its rows of the two versions were measured on different days.
    """
    def when(r: dict) -> str:
        other = r.get("machine") not in (None, machine) and machine
        return r.get("measured", unknown) + (f" on {r['machine']}" if other else "")

    earlier = sorted({when(r) for r in rows} - {today})

    def named(date: str) -> list[str]:
        names = []
        for model in sorted({r["model"] for r in rows if when(r) == date}):
            own = [r for r in rows if r["model"] == model]
            names += [model] if all(when(r) == date for r in own) else \
                [f"{model} (Keras {r['keras']})" for r in own if when(r) == date and "keras" in r]
        return names

    names = named(today)
    if not earlier or not names:
        return []
    runs = [date if len(earlier) == 1 else f"{date} ({', '.join(named(date))})" for date in earlier]
    return ["", f"Only {', '.join(names)} {'was' if len(names) == 1 else 'were'} run again on {today}; "
                f"the other rows are from the same bench's {'run' if len(runs) == 1 else 'runs'} on {'; '.join(runs)}."]
