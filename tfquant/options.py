"""The machinery of a spec: one declaration per option, and what the three ways in build from it.

A spec (`tfquant.spec`) is a frozen dataclass whose fields are declared with `option(...)`: type
(the field's annotation), default, bounds, choices, help and flag. From those declarations alone:

- `Spec.__post_init__` checks every value, and `from_dict` reads JSON (unknown keys refused,
  older schema versions migrated, missing keys defaulted);
- `add_options` and `from_flags` make and read the command's flags (a number's bounds are
  argparse errors, before TensorFlow is imported);
- `json_schema` gives the service's schema of a job's options.

Messages name an option the way the caller knows it (`tfquant.errors.called`). Imports no
TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Optional

from .errors import RecipeError, called, naming
from .types import SCHEMA_VERSION, migrate

TASK_CHOICES = ("classification", "regression", "embedding")


@dataclass(frozen=True)
class Option:
    """How one spec field is offered: help, bounds, choices, and its flag on the command line."""

    help: str
    choices: tuple = ()
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # the bound itself is not allowed
    high_open: bool = False
    flag: Optional[str] = None  # defaults to --the-name
    metavar: Optional[str] = None
    service: bool = True  # offered over HTTP (the server decides threads and paths itself)
    recipe: bool = False  # decides the bytes of the file: written to recipe.json, replayed by --recipe
    pairs: Optional[str] = None  # a dict given as NAME=VALUE pairs: what the value is ("task", "shape")


def option(default: Any = dataclasses.MISSING, *, factory: Optional[Callable[[], Any]] = None, **meta: Any):
    """A spec field with its `Option`."""
    info = {"option": Option(**meta)}
    if factory is not None:
        return field(default_factory=factory, metadata=info)
    return field(default=default, metadata=info)


def flag_of(name: str, opt: Option) -> str:
    return opt.flag or "--" + name.replace("_", "-")


class Spec:
    """The shared machinery of every spec: checks, JSON round trip, the command's flags."""

    command: ClassVar[str] = ""

    # --- the fields ---

    @classmethod
    def options(cls) -> Iterator[tuple[dataclasses.Field, Option, Any]]:
        """(field, option, type hint) of every option, in declaration order."""
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "option" in f.metadata:
                yield f, f.metadata["option"], hints[f.name]

    @classmethod
    def default_of(cls, f: dataclasses.Field) -> Any:
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return dataclasses.MISSING

    def __post_init__(self):
        for f, opt, hint in self.options():
            object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name), hint, opt))
        if self.schema_version != SCHEMA_VERSION:
            raise RecipeError(f"{self.command} options: schema_version: expected {SCHEMA_VERSION}, "
                              f"found {self.schema_version!r}")
        self.check()

    def check(self) -> None:
        """Rules that join several options (a subclass adds its own)."""

    # --- JSON ---

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version,
                **{f.name: _plain(getattr(self, f.name)) for f, _, _ in self.options()}}

    @classmethod
    def from_dict(cls, data: Any) -> "Spec":
        """A spec from JSON: unknown keys refused, older schema versions migrated, missing keys defaulted."""
        if not isinstance(data, dict):
            raise RecipeError(f"{cls.command} options: expected a JSON object, found {type(data).__name__}")
        names = {f.name for f, _, _ in cls.options()}
        data = migrate(dict(data), f"{cls.command} options", names)
        data.pop("command", None)
        unknown = sorted(set(data) - names - {"schema_version"})
        if unknown:
            raise RecipeError(f"unknown option(s) {', '.join(unknown)} for {cls.command}; expected some of: "
                              f"{', '.join(sorted(names))}")
        missing = [f.name for f, _, _ in cls.options() if f.name not in data and cls.default_of(f) is dataclasses.MISSING]
        if missing:
            raise RecipeError(f"{cls.command} needs {', '.join(repr(called(n)) for n in missing)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "Spec":
        return dataclasses.replace(self, **changes)

    def replayable(self) -> dict[str, Any]:
        """What recipe.json holds: the command and every option that decides the file's bytes."""
        data = self.to_dict()
        return {"command": self.command, "schema_version": self.schema_version,
                **{f.name: data[f.name] for f, opt, _ in self.options() if opt.recipe}}

    @classmethod
    def from_options(cls, spec: Optional["Spec"] = None, **options: Any) -> "Spec":
        """`spec` (or the defaults) with keyword options applied; an unknown keyword is a RecipeError."""
        names = {f.name for f, _, _ in cls.options()}
        unknown = sorted(set(options) - names)
        if unknown:
            raise RecipeError(f"unknown option(s) {', '.join(unknown)} for {cls.command}; expected some of: "
                              f"{', '.join(sorted(names))}")
        if spec is None:
            return cls(**options)
        if not isinstance(spec, cls):
            raise RecipeError(f"spec: expected a {cls.__name__}, found {type(spec).__name__}")
        return dataclasses.replace(spec, **options) if options else spec


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _checked(name: str, value: Any, hint: Any, opt: Option) -> Any:
    """`value` as the field's type, within its choices and bounds, or a RecipeError naming the option."""
    where = called(name)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false, found {value!r}")
        return value
    if hint in (int, float):
        whole = hint is int
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and whole and isinstance(value, float):
            ok = value.is_integer()
            value = int(value) if ok else value
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise RecipeError(f"{where}: expected {'a whole number' if whole else 'a number'}{_bounds_text(opt)}, "
                              f"found {value!r}")
        value = int(value) if whole else float(value)
        if not _within(value, opt):
            raise RecipeError(f"{where}: expected {'a whole number' if whole else 'a number'}{_bounds_text(opt)}, "
                              f"found {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected text, found {value!r}")
        if opt.choices and value not in opt.choices:
            raise RecipeError(f"{where}: unknown value {value!r}; expected one of: {', '.join(opt.choices)}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise RecipeError(f"{where}: expected a list of names, found {value!r}")
        return tuple(value)
    if origin is dict:
        return _pairs(where, value, opt)
    raise TypeError(f"{name}: no check for {hint!r}")  # pragma: no cover - a spec declaration bug


def _within(value: float, opt: Option) -> bool:
    if opt.low is not None and (value < opt.low or (opt.low_open and value == opt.low)):
        return False
    return not (opt.high is not None and (value > opt.high or (opt.high_open and value == opt.high)))


def _bounds_text(opt: Option) -> str:
    low = None if opt.low is None else f"{'above' if opt.low_open else 'at least'} {opt.low:g}"
    high = None if opt.high is None else f"{'below' if opt.high_open else 'at most'} {opt.high:g}"
    if opt.low is not None and opt.high is not None:
        return f" between {opt.low:g} and {opt.high:g}" + (" (exclusive)" if opt.low_open and opt.high_open else "")
    return f" {low or high}" if (low or high) else ""


def _pairs(where: str, value: Any, opt: Option) -> dict[str, Any]:
    """A dict option from a dict or from NAME=VALUE texts (the command's repeated flag)."""
    example = "probs=classification" if opt.pairs == "task" else "seq=20,8"
    if isinstance(value, (list, tuple)):
        items = []
        for text in value:
            name, sep, rest = str(text).partition("=")
            if not sep or not name:
                raise RecipeError(f"{where}: expected NAME=VALUE such as {example}, found {text!r}")
            items.append((name, rest))
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        raise RecipeError(f"{where}: expected an object of NAME: VALUE, found {value!r}")
    found: dict[str, Any] = {}
    for name, raw in items:
        if opt.pairs == "task":
            if raw not in TASK_CHOICES:
                raise RecipeError(f"{where}: unknown task {raw!r} for output {name!r}; expected one of: "
                                  f"{', '.join(TASK_CHOICES)}")
            found[str(name)] = raw
            continue
        try:
            dims = tuple(int(d) for d in (raw.replace("x", ",").split(",") if isinstance(raw, str) else raw))
            if not dims or min(dims) < 1:
                raise ValueError
        except (ValueError, TypeError):
            raise RecipeError(f"{where}: expected NAME=D1,D2,... such as {example}, found {name}={raw!r}") from None
        found[str(name)] = dims
    return found


# --- the command's flags ------------------------------------------------------------------------


class _Called(dict):
    """`"... {max_drop} ..."`.format_map(_Called()) spells each named option as the current caller does."""

    def __missing__(self, key: str) -> str:
        return called(key)


def help_text(opt: Option) -> str:
    """An option's help, with the other options it names spelled for the current caller."""
    return opt.help.format_map(_Called())


def add_options(parser, cls: type[Spec]) -> None:
    """One flag per option of `cls`, with its default and help; parsed values stay None unless given."""
    with naming("command"):
        for f, opt, hint in cls.options():
            flag = flag_of(f.name, opt)
            default = cls.default_of(f)
            text = help_text(opt)
            if hint is bool:
                text += "; on unless this flag is given" if default else ""
                parser.add_argument(flag, dest=f.name, action="store_const", const=not default, default=None,
                                    help=text)
                continue
            if default is not dataclasses.MISSING and default not in (None, (), {}):
                text += f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
            if opt.pairs or typing.get_origin(hint) is tuple:
                parser.add_argument(flag, dest=f.name, action="append", metavar=opt.metavar, default=None, help=text)
                continue
            number = _parser_for(hint, opt)
            metavar = opt.metavar or (None if opt.choices else {"int": "N", "float": "F"}.get(getattr(number, "__name__", ""),
                                                                                             "TEXT"))
            if default is dataclasses.MISSING:  # checked when the spec is built: a --recipe file may set it
                text += " (required, unless a --recipe file sets it)"
            parser.add_argument(flag, dest=f.name, default=None, help=text, metavar=metavar,
                                choices=list(opt.choices) or None, type=number)


def _parser_for(hint: Any, opt: Option) -> Optional[Callable[[str], Any]]:
    """A type= for argparse: the number, checked by the same rule as the spec, or an ArgumentTypeError."""
    if typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint not in (int, float):
        return None

    def parse(text: str):
        kind = "a whole number" if hint is int else "a number"
        try:
            value = hint(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, found {text!r}") from None
        if not math.isfinite(value) or not _within(value, opt):
            raise argparse.ArgumentTypeError(f"expected {kind}{_bounds_text(opt)}, found {text}")
        return value

    parse.__name__ = hint.__name__
    return parse


def from_flags(ns: argparse.Namespace, cls: type[Spec], base: Optional[dict[str, Any]] = None) -> Spec:
    """The spec from parsed flags (those given) over `base` (a recipe file's options)."""
    data = dict(base or {})
    data.pop("command", None)
    for f, _, _ in cls.options():
        value = getattr(ns, f.name, None)
        if value is not None:
            data[f.name] = value
    return cls.from_dict(data)


def given_flags(ns: argparse.Namespace, cls: type[Spec]) -> dict[str, str]:
    """{option name: flag} of the options given on the command line."""
    return {f.name: flag_of(f.name, opt) for f, opt, _ in cls.options() if getattr(ns, f.name, None) is not None}


def flags(cls: type[Spec]) -> dict[str, str]:
    """{option name: flag} of every option of `cls`."""
    return {f.name: flag_of(f.name, opt) for f, opt, _ in cls.options()}


def replay(text: str, cls: type[Spec], where: str) -> dict[str, Any]:
    """The options a recipe file (recipe.json, a whole report.json, or an older plain recipe) sets."""
    import json

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecipeError(f"{where}: expected a recipe JSON file, found invalid JSON ({exc})") from None
    if isinstance(data, dict) and "quantized" in data and "recipe" in data:  # a whole report.json
        data = data.get("spec") or data["recipe"]
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a JSON object, found {type(data).__name__}")
    command = data.get("command", cls.command)
    if command != cls.command:
        raise RecipeError(f"{where}: expected a recipe of tfquant {cls.command}, found one of tfquant {command}")
    try:
        with naming("python"):  # a JSON file's keys are the options' own names
            cls.from_dict(data)  # checked now, with the file's name in the message
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    data = migrate(dict(data), "recipe", (f.name for f, _, _ in cls.options()))
    data.pop("command", None)
    data.pop("schema_version", None)
    return data


# --- the service's schema -----------------------------------------------------------------------


def json_schema(cls: type[Spec]) -> dict[str, Any]:
    """The JSON schema of a job's options for `cls` (the OpenAPI document carries it)."""
    with naming("service"):
        return _json_schema(cls)


def _json_schema(cls: type[Spec]) -> dict[str, Any]:
    command: dict[str, Any] = {"type": "string", "enum": [cls.command]}
    required = []
    if cls.command == "convert":
        command["default"] = cls.command  # a job without "command" is a conversion
    else:
        required.append("command")
    properties: dict[str, Any] = {"command": command}
    for f, opt, hint in cls.options():
        if not opt.service:
            continue
        schema = _type_schema(hint)
        schema["description"] = help_text(opt)
        if opt.choices:
            schema["enum"] = list(opt.choices) + ([None] if _optional(hint) else [])
        if opt.low is not None:
            schema["exclusiveMinimum" if opt.low_open else "minimum"] = opt.low
        if opt.high is not None:
            schema["exclusiveMaximum" if opt.high_open else "maximum"] = opt.high
        default = cls.default_of(f)
        if default is dataclasses.MISSING:
            required.append(f.name)
        else:
            schema["default"] = _plain(default)
        properties[f.name] = schema
    properties["schema_version"] = {"type": "integer", "default": SCHEMA_VERSION,
                                    "description": "the options' schema version; older ones are migrated"}
    return {"title": cls.__name__, "type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)


def _type_schema(hint: Any) -> dict[str, Any]:
    nullable = _optional(hint)
    if nullable:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    if hint is bool:
        schema: dict[str, Any] = {"type": "boolean"}
    elif hint is int:
        schema = {"type": "integer"}
    elif hint is float:
        schema = {"type": "number"}
    elif hint is str:
        schema = {"type": "string"}
    elif origin is tuple:
        schema = {"type": "array", "items": {"type": "string"}}
    else:  # dict: tasks (text values) or input shapes (lists of whole numbers)
        value = typing.get_args(hint)[1]
        schema = {"type": "object", "additionalProperties":
                  {"type": "string"} if value is str else {"type": "array", "items": {"type": "integer", "minimum": 1}}}
    if nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema
