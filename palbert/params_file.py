"""Reading ``params.yaml`` and ``table3.yaml``: a broken file stops with one line naming the file and line, a bad
value with one naming the file and key (``palbert.config`` holds the schema), and both say how to restore the file.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from palbert.config import Params, Table3Params, params_from_dict, validate, validate_cross_field
from palbert.encoder_source import check_pretrained
from palbert.errors import ParamsError
from palbert.paths import PARAMS

#: The Table 3 catalogue (rows, seeds, scales): read by ``palbert table3``, not by the pipeline's stages.
TABLE3_FILE = "table3.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; a params file with both is a mistake."""

    def __init__(self, stream: str, path: Path) -> None:
        super().__init__(stream)
        self.name = str(path)  # what error messages call the file

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, typing.Hashable):
                continue  # PyYAML's own check below names it
            if key in seen:
                raise ParamsError(f"{self.name}:{line}: key {key!r} appears twice (first on line {seen[key]}); "
                                  "keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as ``<line>:<column>: what`` plus the fix for the usual cause."""
    mark = getattr(exc, "problem_mark", None)
    where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    fix = "; indent with spaces, YAML does not allow tabs" if "'\\t'" in problem else ""
    return f"{where}: not valid YAML ({getattr(exc, 'context', None) or 'parsing'}: {problem}){fix}"


def _restore_hint(path: Path) -> str:
    """`dvc exp run -S` writes its values into params.yaml, so a bad one fails every later run until undone."""
    return (f" [if a `dvc exp run -S` put it there: DVC wrote it into {path.name}; fix the value, run "
            f"`dvc exp run -S <key>=<good value>`, or `git checkout {path.name}` to restore the committed file]")


def _read_yaml(path: Path) -> Any:
    """A YAML file's content; unreadable, non-UTF-8 or malformed files stop with one line naming file and line."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
        return yaml.load(text, Loader=lambda stream: _UniqueKeyLoader(stream, path))  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read the params file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ParamsError(f"{path}:{line}: byte 0x{exc.object[exc.start]:02x} is not UTF-8; save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}{_yaml_problem(exc)}") from None


def load_params(path: str | Path = PARAMS) -> Params:
    """Read and validate a params file, and check that ``model.pretrained`` names something loadable.

    Every error is one line naming the file (and line or key), with how to restore the file, because
    ``dvc exp run -S`` writes its values into it.
    """
    path = Path(path)
    raw = _read_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (data:, model:, train:, ...) at the top, got a "
                          f"{type(raw).__name__}{_restore_hint(path)}")
    try:
        if isinstance(raw, dict) and "table3" in raw:
            raise ParamsError(f"table3: the Table 3 catalogue lives in {TABLE3_FILE} beside {path.name} (it is not "
                              f"a run knob); move this section there")
        params = params_from_dict(raw or {})
        check_pretrained(params.model.pretrained)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}{_restore_hint(path)}") from None
    return params


def load_table3(path: str | Path, params: Params) -> Params:
    """``params`` with the Table 3 catalogue of ``path``, every row's and scale's overrides checked against it.

    The catalogue has a file of its own so that ``params.yaml`` holds only what a run trains with: that is
    what ``dvc exp show`` lists and what each experiment's MLflow run records.
    """
    path = Path(path)
    raw = _read_yaml(path)
    try:
        if not isinstance(raw, dict) or "table3" not in raw or set(raw) != {"table3"}:
            raise ParamsError("expected one top-level key, table3 (with seeds, scales and rows)")
        with_table3 = dataclasses.replace(params, table3=validate(Table3Params, raw["table3"], ("table3",)))
        validate_cross_field(with_table3)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    return with_table3
