"""The model card of a trained model: ``models/best/README.md`` (what a Hugging Face user opens first) and the
description of its registered MLflow version, both written from the run's own params and training summary.

The card is a ``huggingface_hub.ModelCard``: its metadata (``ModelCardData``) carries the base model, its
license, the datasets by their Hub ids and a machine-readable ``model-index`` of the dev scores (``EvalResult``),
so that the Hub, ``ModelCard.load`` and evaluation tools read the same numbers as the text. It has no
``pipeline_tag``: the folder's ``config.json`` is the shared encoder alone, and a ``text-classification``
pipeline on it would add a randomly initialised head. The body says what the model is, what it was trained and
scored on, how to call it, where it stops being useful and which paper it follows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from palbert.atomic import write_text
from palbert.registry import CHAMPION, champion_bar_reason
from palbert.tasks import DATASET_TASK, OVERALL_FORMULA, TASK_DATASET, TASK_SPECS, TASKS

if TYPE_CHECKING:
    from huggingface_hub import ModelCard, ModelCardData

    from palbert.config import Params

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
#: What ``model.pretrained: embedded`` is, for people who never read params.yaml.
EMBEDDED_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_DATASET_TEXT = {
    "sst": "Stanford Sentiment Treebank (movie-review sentences, 5 sentiment classes)",
    "quora": "Quora Question Pairs (duplicate or not)",
    "sts": "SemEval STS Benchmark (sentence pairs, similarity 0..5)",
    "snli": "SNLI (entailment as paraphrase, contradiction as not; neutral dropped)",
    "cfimdb": "CFIMDB (movie reviews, positive/negative as SST classes 4/0)",
}
#: Each dataset's public copy on the Hugging Face Hub (id, config), for the card's ``datasets`` and
#: ``model-index``; the runs use the CS224N default project's splits of them. CFIMDB has no Hub copy.
HUB_DATASETS: dict[str, tuple[str, str | None]] = {
    "sst": ("SetFit/sst5", None),
    "quora": ("nyu-mll/glue", "qqp"),
    "sts": ("nyu-mll/glue", "stsb"),
    "snli": ("stanfordnlp/snli", None),
}
#: The dev metric of each task as a Hub metric id and task type.
_HUB_METRIC = {"accuracy": "accuracy", "pearson": "pearsonr"}
_HUB_TASK = {"sst": "text-classification", "para": "text-classification", "sts": "sentence-similarity"}
CITATION = """@techreport{sullivan-kumar-my-pal-bert,
  title       = {My {PAL} {BERT}: Using Projected Attention Layers and Additional Fine-Tuning Strategies
                 to Improve {BERT}'s Performance on Downstream Tasks},
  author      = {Sullivan, Colin Michael and Kumar, Abhishek},
  institution = {Stanford University},
  type        = {{CS224N} Default Project},
}"""


def encoder_name(params: "Params") -> str:
    return EMBEDDED_ENCODER if params.model.pretrained == "embedded" else params.model.pretrained


def encoder_license(params: "Params") -> str | None:
    """The license in the pretrained encoder's own model card (its folder's README.md), else None: the
    fine-tuned weights are a derivative of the encoder's and carry its license."""
    from huggingface_hub import ModelCard

    from palbert.encoder_source import resolve_pretrained

    try:
        folder = Path(resolve_pretrained(params.model.pretrained))
    except FileNotFoundError:
        return None
    if not (folder / CARD_FILE).is_file():
        return None
    try:
        return ModelCard.load(folder / CARD_FILE).data.license
    except Exception as exc:  # a damaged card upstream must not stop a training run at its end
        log.warning("%s: unreadable model card (%s): no license in this model's card", folder / CARD_FILE, exc)
        return None


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _sample_note(params: "Params") -> str:
    """How the data was sampled, for dataset names; empty for a full run."""
    parts = []
    if params.data.subset:
        parts.append(f"{params.data.subset} rows of every split")
    if params.data.dev_subset:
        parts.append(f"at most {params.data.dev_subset} dev rows")
    return f"sampled: {', '.join(parts)}" if parts else ""


def eval_results(params: "Params", dev: Mapping[str, float]) -> list[Any]:
    """The dev scores as ``huggingface_hub.EvalResult`` entries (the card's ``model-index``)."""
    from huggingface_hub import EvalResult

    sample = _sample_note(params)
    results = []
    for task in TASKS:
        spec = TASK_SPECS[task]
        if spec.metric not in dev or spec.dataset not in HUB_DATASETS:
            continue
        hub_id, config = HUB_DATASETS[spec.dataset]
        results.append(EvalResult(
            task_type=_HUB_TASK.get(task, "text-classification"), task_name=f"{task}: {spec.describe}",
            dataset_type=hub_id, dataset_config=config, dataset_split="validation",
            dataset_name=f"{spec.dataset} (CS224N dev split{'; ' + sample if sample else ''})",
            metric_type=_HUB_METRIC[spec.score], metric_name=spec.metric, metric_value=round(dev[spec.metric], 4)))
    if "overall" in dev:
        results.append(EvalResult(
            task_type="text-classification", task_name=f"overall = {OVERALL_FORMULA}",
            dataset_type="cs224n-multitask", dataset_split="validation",
            dataset_name=f"CS224N dev splits of {', '.join(TASK_DATASET.values())}{'; ' + sample if sample else ''}",
            metric_type="overall", metric_name="overall", metric_value=round(dev["overall"], 4)))
    return results


def card_data(params: "Params", summary: Mapping[str, Any]) -> "ModelCardData":
    """The card's metadata: base model, license, Hub datasets, metrics and the dev scores' ``model-index``."""
    from huggingface_hub import ModelCardData

    datasets = [*TASK_DATASET.values(), *params.data.extra]
    hub_ids = list(dict.fromkeys(HUB_DATASETS[name][0] for name in datasets if name in HUB_DATASETS))
    license_ = encoder_license(params)
    base = encoder_name(params)
    return ModelCardData(  # base_model is a Hub id: a local folder has none
        language="en", license=license_, library_name="transformers", base_model=None if Path(base).exists() else base,
        datasets=hub_ids, metrics=sorted({_HUB_METRIC[TASK_SPECS[t].score] for t in TASKS}),
        tags=["bert", "multi-task", "projected-attention-layers", "palbert"],
        model_name=params.tracking.experiment, eval_results=eval_results(params, summary.get("best_dev", {})),
    )


def _scores_table(dev: Mapping[str, float]) -> list[str]:
    rows = ["| task | dev metric | score |", "|---|---|---|"]
    for task in TASKS:
        spec = TASK_SPECS[task]
        if spec.metric in dev:
            name = task if spec.dataset == task else f"{task} ({spec.dataset})"
            rows.append(f"| {name} | `{spec.metric}` ({spec.score}) | {dev[spec.metric]:.4f} |")
    if "overall" in dev:
        rows.append(f"| all | `overall` = {OVERALL_FORMULA} | {dev['overall']:.4f} |")
    return rows


def _how_to_use(params: "Params", summary: Mapping[str, Any], candidate: bool) -> list[str]:
    run_id = summary.get("mlflow_run_id")
    lines = ["## How to use", "", "```bash",
             'palbert predict sst --model models/best "A gorgeous, witty, seductive movie."',
             "palbert predict sts --model models/best --input pairs.tsv      # one 'a<TAB>b' per line"]
    if run_id:
        lines.append(f"palbert serve --model runs:/{run_id}/model --port 5001   # this model over HTTP")
    lines += ["```", ""]
    if candidate:
        lines += [f"`palbert serve` alone serves `models:/{params.tracking.experiment}@{CHAMPION}`, the registry's best "
                  "version so far, which may be another run's model than this one.", ""]
    lines += ["In Python: `palbert.predict.Predictor.load(folder).predict('para', ['How do I learn Python?'], "
              "['What is the best way to learn Python?'])`. `transformers.AutoModel.from_pretrained(folder)` "
              "loads the shared encoder alone (without the PALs and heads, which live in "
              "`palbert_task_layers.safetensors`); no `transformers` pipeline loads the whole model.", ""]
    return lines


def card_body(params: "Params", summary: Mapping[str, Any]) -> str:
    """The card in Markdown, without the metadata (the MLflow version's description)."""
    dev = summary.get("best_dev", {})
    datasets = [*TASK_DATASET.values(), *params.data.extra]
    steps = summary.get("steps")
    not_candidate = champion_bar_reason(params, steps)
    pals = (f"with task-specific Projected Attention Layers (PALs: {params.model.pal_size} wide, "
            f"{params.model.pal_heads} heads) beside every encoder layer" if params.model.pals else "without PALs")
    lines = ["# palbert: a multi-task BERT for sentiment, paraphrase and similarity", ""]
    if not_candidate:
        lines += [f"**A quick look, not a trained model to use**: {not_candidate}. Its scores show that the "
                  "workflow runs, not what the recipe reaches.", ""]
    lines += [
        f"A BERT encoder ({encoder_name(params)}) fine-tuned on three tasks at once {pals}, "
        f"{'with' if params.train.simcse else 'without'} unsupervised SimCSE, and one head per task:", "",
        *(f"- `{task}`: {TASK_SPECS[task].describe}" for task in TASKS), "",
        "## Trained on", "",
        *(f"- `{name}`: {_DATASET_TEXT.get(name, name)}"
          + (f" (Hub: `{HUB_DATASETS[name][0]}`{', ' + HUB_DATASETS[name][1] if HUB_DATASETS[name][1] else ''})"
             if name in HUB_DATASETS else "")
          + f", for the `{DATASET_TASK[name]}` head" for name in datasets), "",
        "The CS224N default project's train and dev splits of them"
        + (f" ({_sample_note(params)})." if _sample_note(params) else "."), "",
        f"{steps if steps is not None else '?'} steps in {_epochs(params.train.epochs)} "
        f"({params.train.steps_per_epoch} steps each with {params.train.sampling} task sampling; sequential and "
        f"round-robin epochs run whole passes), batch {params.train.batch_size}, lr {params.train.lr:g}, "
        f"{params.train.schedule} schedule, seed {params.train.seed}; the best epoch by dev `overall` is kept "
        f"(epoch {summary.get('best_epoch', '?')}).", "",
        "## Dev scores (CS224N dev splits)", "",
        "The same names as `metrics/dev.json` and the MLflow run's metrics.", "",
        *_scores_table(dev), "",
        *_how_to_use(params, summary, candidate=not not_candidate),
        "## Limitations", "",
        f"- English only, short texts: inputs are truncated to {params.data.max_length} tokens (a pair shares them).",
        "- Three tasks only: 5-class movie-review sentiment, Quora-style duplicate questions, STS-style "
        "similarity. Other domains or label sets need fine-tuning.",
        f"- A small encoder ({encoder_name(params)}): cheap to run, below BERT-base accuracy.",
        "- Dev scores are on the splits used to pick the best epoch, so they are slightly optimistic; the test "
        "splits' labels are not public.",
        "- The sentence embeddings of `AutoModel` come from the shared encoder without the PALs: not what "
        "the heads see.", "",
        "## Citation", "", "The recipe follows:", "", "```bibtex", CITATION, "```", "",
    ]
    if summary.get("mlflow_run_id"):
        lines += ["## Provenance", "", f"MLflow run `{summary['mlflow_run_id']}`; all params in the run and in "
                  "`palbert_model.json`.", ""]
    return "\n".join(lines)


def model_card(params: "Params", summary: Mapping[str, Any]) -> "ModelCard":
    """The Hugging Face card: ``card_data`` as metadata, then ``card_body``."""
    from huggingface_hub import ModelCard

    return ModelCard(f"---\n{card_data(params, summary).to_yaml()}\n---\n\n{card_body(params, summary)}")


def write_model_card(model_dir: Path, params: "Params", summary: Mapping[str, Any]) -> Path:
    """Write ``model_dir/README.md`` atomically."""
    path = Path(model_dir) / CARD_FILE
    write_text(path, str(model_card(params, summary)))
    return path
