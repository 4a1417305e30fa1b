"""Validating YAML values with pydantic: field types that read scalars as people write them in YAML, and
pydantic's errors as one line naming the key (``palbert.config`` declares the params with them).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Annotated, Any, Mapping, TypeVar

from pydantic import BeforeValidator, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from palbert.errors import ParamsError


# --------------------------------------------------------------------------------------------
# Scalars as people write them in YAML
# --------------------------------------------------------------------------------------------
# By hand, not pydantic's lax mode: that takes `yes`/`on`/`1` as true and a boolean as a number, and strict mode
# refuses `2e-05`, the string PyYAML (YAML 1.1) makes of what `dvc exp run -S train.lr=2e-5` writes (YAML 1.2).


def _refuse(reason: str) -> PydanticCustomError:
    return PydanticCustomError("params", "{reason}", {"reason": reason})


def _comma_hint(value: Any) -> str:
    """``1,800`` or ``0,5`` in a params file is a string to YAML: say what to write instead."""
    if not (isinstance(value, str) and "," in value):
        return ""
    tail = value.rpartition(",")[2]
    thousands = value.count(",") > 1 or (len(tail) == 3 and tail.isdigit())
    return f" (no commas in numbers: write {value.replace(',', '' if thousands else '.')})"


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _refuse(f"expected an integer, got the boolean {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _refuse(f"expected an integer, got {value!r}{_comma_hint(value)}")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _refuse(f"expected a number, got the boolean {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _refuse(f"expected a number, got {value!r}{_comma_hint(value)}") from None
    else:
        raise _refuse(f"expected a number, got {value!r}")
    if not math.isfinite(number):
        raise _refuse(f"expected a finite number, got {value!r}")
    return number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _refuse(f"expected true or false, got {value!r}")


def _to_str(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _refuse(f"expected a string, got {value!r}")
    return str(value)


def distinct(items: list) -> list:
    if len(set(items)) != len(items):
        raise _refuse(f"duplicate entries in {items!r}")
    return items


T = TypeVar("T")
Int = Annotated[int, BeforeValidator(_to_int)]
Float = Annotated[float, BeforeValidator(_to_float)]
Bool = Annotated[bool, BeforeValidator(_to_bool)]
Str = Annotated[str, BeforeValidator(_to_str)]
#: One of a ``Literal``'s strings; ``sampling: " annealed"`` (stray blanks inside quotes) is ``annealed``.
Choice = Annotated[T, BeforeValidator(lambda value: value.strip() if isinstance(value, str) else value)]
#: An empty YAML value (``extra:``) is an empty list, mapping or section.
ListOf = Annotated[list[T], BeforeValidator(lambda value: [] if value is None else value)]
MappingOf = Annotated[dict[str, T], BeforeValidator(lambda value: {} if value is None else value)]
Section = Annotated[T, BeforeValidator(lambda value: {} if value is None else value)]
#: Every section refuses keys it does not know.
CLOSED = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------
# Validation: pydantic's errors as one line naming the key
# --------------------------------------------------------------------------------------------

_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _dotted(loc: tuple) -> str:
    """``("data", "extra", 1)`` -> ``data.extra[1]``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _hint_at(hint: Any, loc: tuple) -> Any:
    """The type a location of the schema holds (``Annotated`` stripped)."""
    for part in loc:
        hint = typing.get_type_hints(hint)[part] if dataclasses.is_dataclass(hint) else typing.get_args(hint)[-1]
    return hint


def did_you_mean(where: str, name: str, known: typing.Iterable[str], sections: Mapping[str, Any] = {}) -> str:
    """``; did you mean 'train.lr'?``: for ``lrr`` under ``train`` its closest key, for ``pals`` under ``train``
    the section that has it (``sections``: section -> its keys); nothing when no key is close."""
    elsewhere = [f"{other}.{name}" for other, keys in sections.items() if other != where and name in keys]
    close = [f"{where}.{key}" if where else key for key in difflib.get_close_matches(name, list(known), n=1)]
    return f"; did you mean {(elsewhere or close)[0]!r}?" if elsewhere or close else ""


def _unknown_key(schema: type, loc: tuple, prefix: tuple) -> str:
    section, name = loc[:-1], loc[-1]
    known = [f.name for f in dataclasses.fields(_hint_at(schema, section))]
    where = _dotted(prefix + section)
    parent = _hint_at(schema, section[:-1]) if section and isinstance(section[-1], str) else None
    siblings = {_dotted(prefix + section[:-1] + (f.name,)): [k.name for k in dataclasses.fields(hint)]
                for f, hint in _section_hints(parent)}  # `train.pals`: a key of another section
    return f"unknown key{did_you_mean(where, name, known, siblings)} (known keys under {where or 'params'}: " \
           f"{', '.join(known)})"


def _section_hints(schema: Any) -> list[tuple[dataclasses.Field, type]]:
    """The fields of a dataclass that are sections (dataclasses) themselves, with their types."""
    if not dataclasses.is_dataclass(schema):
        return []
    hints = typing.get_type_hints(schema)
    return [(f, hints[f.name]) for f in dataclasses.fields(schema) if dataclasses.is_dataclass(hints[f.name])]


def _reason(error: ErrorDetails, schema: type, prefix: tuple) -> str:
    kind, value, loc, ctx = error["type"], error["input"], error["loc"], error.get("ctx", {})
    if kind == "params":
        return ctx["reason"]
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {_BOUNDS[kind]} {bound}, got {value!r}"
    if kind == "literal_error":
        return f"must be one of {', '.join(map(str, typing.get_args(_hint_at(schema, loc))))}; got {value!r}"
    if kind == "unexpected_keyword_argument":
        return _unknown_key(schema, loc, prefix)
    if kind in ("missing", "missing_argument"):
        return "required key is missing"
    if kind in ("dataclass_type", "dataclass_args_type", "dict_type"):
        return f"expected a mapping, got {value!r}"
    if kind == "list_type":
        return f"expected a list, got {value!r}"
    return f"{error['msg']}, got {value!r}"


_ADAPTERS: dict[type, TypeAdapter] = {}


def validate(schema: type[T], raw: Any, prefix: tuple = ()) -> T:
    """``raw`` as ``schema`` (a section dataclass), or a ``ParamsError`` naming the first wrong key
    (an unknown key first: a misspelt key often explains the other errors)."""
    adapter = _ADAPTERS.setdefault(schema, TypeAdapter(schema))
    try:
        return adapter.validate_python({} if raw is None else raw)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda error: error["type"] != "unexpected_keyword_argument")
        first = errors[0]
        key = _dotted(prefix + first["loc"]) or "params"
        raise ParamsError(f"{key}: {_reason(first, schema, prefix)}") from None
