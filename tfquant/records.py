"""Frozen dataclasses that read back from JSON: `to_dict()` / `from_dict()` for records of plain values,
enums and nested records, so that a report written as JSON reads back to an equal object."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

from .errors import RecipeError


class Record:
    """`to_dict` / `from_dict` for frozen dataclasses of plain values, enums and nested records."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise RecipeError(f"{cls.__name__}: expected a JSON object, found {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RecipeError(
                f"{cls.__name__}: unknown key(s) {', '.join(unknown)}; expected some of: {', '.join(sorted(names))}"
            )
        return cls(**{k: _build(hints[k], v) for k, v in data.items()})


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _build(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value) if len(inner) == 1 else value
    if origin in (list, tuple):
        return origin(_build(args[0], v) for v in value) if args else origin(value)
    if origin is dict:
        return {k: _build(args[1], v) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        # An unknown value stays a string: the record's own check names the option and the choices.
        return hint(value) if value in {m.value for m in hint} else value
    return value
