"""The model card of a trained model: ``models/best/README.md`` (what a Hugging Face user opens first) and the
description of its registered MLflow version, both written from the run's own params and training summary.

It says what the model is, what it was trained and scored on, its dev scores, how to call it and where it
stops being useful, so that a folder or a registry version found later explains itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from palbert.atomic import write_text
from palbert.tasks import DATASET_TASK, OVERALL_FORMULA, TASK_DATASET, TASK_SPECS, TASKS

if TYPE_CHECKING:
    from palbert.config import Params

CARD_FILE = "README.md"
#: What ``model.pretrained: embedded`` is, for people who never read params.yaml.
EMBEDDED_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
#: The params that define a recipe: shown in the card and tagged on a registered version.
RECIPE_KEYS = ("model.pretrained", "model.pals", "model.pal_size", "model.pooling", "model.pair_encoding",
               "data.extra", "data.subset", "data.dev_subset", "data.max_length", "train.sampling",
               "train.simcse", "train.schedule", "train.lr", "train.epochs", "train.steps_per_epoch",
               "train.batch_size", "train.seed", "train.precision")
_DATASET_TEXT = {
    "sst": "Stanford Sentiment Treebank (movie-review sentences, 5 sentiment classes)",
    "quora": "Quora Question Pairs (CS224N subset; duplicate or not)",
    "sts": "SemEval STS Benchmark (sentence pairs, similarity 0..5)",
    "snli": "SNLI (entailment as paraphrase, contradiction as not; neutral dropped)",
    "cfimdb": "CFIMDB (movie reviews, positive/negative as SST classes 4/0)",
}


def recipe(params: "Params") -> dict[str, str]:
    """``RECIPE_KEYS`` of ``params`` as strings (lists joined by commas)."""
    flat = params.flat()
    return {key: ",".join(map(str, flat[key])) if isinstance(flat[key], list) else str(flat[key])
            for key in RECIPE_KEYS}


def encoder_name(params: "Params") -> str:
    return EMBEDDED_ENCODER if params.model.pretrained == "embedded" else params.model.pretrained


def comparable_dev(params: "Params") -> bool:
    """Whether the dev scores are on the full dev splits (a subset run's scores are on fewer, other rows)."""
    return params.data.subset == 0 and params.data.dev_subset == 0


def _scores_table(dev: Mapping[str, float]) -> list[str]:
    rows = ["| task | dev metric | score |", "|---|---|---|"]
    for task in TASKS:
        spec = TASK_SPECS[task]
        if spec.metric in dev:
            name = task if spec.dataset == task else f"{task} ({spec.dataset})"
            rows.append(f"| {name} | {spec.score} | {dev[spec.metric]:.4f} |")
    if "overall" in dev:
        rows.append(f"| overall | {OVERALL_FORMULA} | {dev['overall']:.4f} |")
    return rows


def _front_matter(params: "Params") -> list[str]:
    datasets = [*TASK_DATASET.values(), *params.data.extra]
    return ["---", "language: en", "library_name: transformers", f"base_model: {encoder_name(params)}",
            "pipeline_tag: text-classification", "tags: [bert, multi-task, projected-attention-layers, palbert]",
            f"datasets: [{', '.join(datasets)}]", "metrics: [accuracy, pearsonr]", "---", ""]


def card_body(params: "Params", summary: Mapping[str, Any]) -> str:
    """The card in Markdown, without the Hugging Face front matter (the MLflow version description)."""
    dev = summary.get("best_dev", {})
    datasets = [*TASK_DATASET.values(), *params.data.extra]
    pals = (f"with task-specific Projected Attention Layers (PALs: {params.model.pal_size} wide, "
            f"{params.model.pal_heads} heads) beside every encoder layer" if params.model.pals else "without PALs")
    lines = [
        "# palbert: a multi-task BERT for sentiment, paraphrase and similarity", "",
        f"A BERT encoder ({encoder_name(params)}) fine-tuned on three tasks at once {pals}, "
        f"{'with' if params.train.simcse else 'without'} unsupervised SimCSE, and one head per task:",
        "",
        *(f"- `{task}`: {TASK_SPECS[task].describe}" for task in TASKS),
        "",
        "## Trained on", "",
        *(f"- `{name}`: {_DATASET_TEXT.get(name, name)}, for the `{DATASET_TASK[name]}` head" for name in datasets),
        "",
        f"{summary.get('steps', '?')} steps ({params.train.epochs} epochs x {params.train.steps_per_epoch}, "
        f"{params.train.sampling} task sampling, batch {params.train.batch_size}, lr {params.train.lr:g}, "
        f"{params.train.schedule} schedule, seed {params.train.seed}); the best epoch by dev overall is kept "
        f"(epoch {summary.get('best_epoch', '?')}).",
    ]
    if not comparable_dev(params):
        lines += ["", f"**A sample run** (data.subset={params.data.subset}, data.dev_subset={params.data.dev_subset}): "
                      "trained and scored on a sample of the data; its dev scores are not comparable with a full run's."]
    lines += ["", "## Dev scores (CS224N dev splits)", "", *_scores_table(dev), "",
              "## How to use", "",
              "```bash",
              'palbert predict sst --model models/best "A gorgeous, witty, seductive movie."',
              "palbert predict sts --model models/best --input pairs.tsv      # one 'a<TAB>b' per line",
              f"mlflow models serve -m models:/{params.tracking.experiment}@champion --env-manager local --port 5001",
              "```", "",
              "In Python: `palbert.predict.Predictor.load(folder).predict('para', ['How do I learn Python?'], "
              "['What is the best way to learn Python?'])`. `transformers.AutoModel.from_pretrained(folder)` "
              "loads the shared encoder alone (without the PALs and heads, which live in "
              "`palbert_task_layers.safetensors`).", "",
              "## Limits", "",
              "- English only, short texts: inputs are truncated to "
              f"{params.data.max_length} tokens (a pair shares them).",
              "- Three tasks only: 5-class movie-review sentiment, Quora-style duplicate questions, STS-style "
              "similarity. Other domains or label sets need fine-tuning.",
              f"- A small encoder ({encoder_name(params)}): cheap to run, below BERT-base accuracy.",
              "- Dev scores are on the splits used to pick the best epoch, so they are slightly optimistic.", ""]
    if summary.get("mlflow_run_id"):
        lines += ["## Provenance", "", f"MLflow run `{summary['mlflow_run_id']}`; all params in the run and in "
                  "`palbert_model.json`.", ""]
    return "\n".join(lines)


def model_card(params: "Params", summary: Mapping[str, Any]) -> str:
    """``README.md`` for a Hugging Face folder: front matter, then ``card_body``."""
    return "\n".join(_front_matter(params)) + card_body(params, summary)


def write_model_card(model_dir: Path, params: "Params", summary: Mapping[str, Any]) -> Path:
    """Write ``model_dir/README.md`` atomically."""
    path = Path(model_dir) / CARD_FILE
    write_text(path, model_card(params, summary))
    return path
