"""The tasks and datasets: one table of what each task is, one list of datasets and the task each trains.

Adding a task is a ``TaskSpec`` here (its PALs, head, loss, metric, overall term, titles, serving example and
meaning all follow from the spec), its main dataset's reader and source, and that dataset in ``dvc.yaml``; adding a
dataset is
an entry of ``DATASET_TASK`` here, its literal name in ``dvc.yaml``'s prepare ``foreach`` (a test checks the
two agree), its raw files in ``data/sources.py`` and how to read them in ``data/readers.py``.

This module imports nothing heavy: the prediction transforms call only tensor methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal


def _argmax(output: Any) -> Any:
    return output.argmax(dim=-1)


def _positive(output: Any) -> Any:
    return (output > 0).long()


#: How a task's dev metric enters the overall score (a float or a numpy array of resamples): its function and
#: its text in the formula, ``{}`` being the metric's name. ``unit_from_r`` maps Pearson's [-1, 1] onto [0, 1]
#: so that every term weighs alike.
OVERALL_TERMS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "as_is": (lambda value: value, "{}"),
    "unit_from_r": (lambda r: (r + 1) / 2, "({} + 1) / 2"),
}


@dataclass(frozen=True)
class TaskSpec:
    """What one task is: its data, head, loss, metric and how its predictions look."""

    name: str
    #: The main dataset of the task, the one scored on dev and test.
    dataset: str
    #: Sentence pairs (para, sts) or single sentences (sst).
    pair: bool
    #: Width of the head's output; a width of 1 is squeezed to one value per example.
    outputs: int
    #: Training loss on the head's raw output (``train/losses.py``).
    loss: Literal["cross_entropy", "binary_cross_entropy", "mse"]
    #: Dev metric (``metrics.py``) and its name in ``metrics/dev.json``.
    score: Literal["accuracy", "pearson"]
    metric: str
    #: Class labels (stored int64, predicted as int) or, when None, real-valued scores in ``score_range``
    #: (stored float32, predicted as float, the head's bias starting at the middle of the range).
    classes: int | None
    score_range: tuple[float, float] | None = None
    #: The prediction of a raw head output; default for scores: clamped into ``score_range``.
    to_prediction: Callable[[Any], Any] | None = None
    #: What a prediction is, for help texts.
    describe: str = ""
    #: How the dev metric enters the overall score (``OVERALL_TERMS``), or None: not in it.
    overall: Literal["as_is", "unit_from_r"] | None = "as_is"
    #: Titles: the task (loss figures), its dev metric (figures), its Table 3 column.
    title: str = ""
    metric_title: str = ""
    column: str = ""
    #: A request to the served model: sentence1 and (pair tasks) sentence2.
    example: tuple[str, str] = ("", "")
    #: What a prediction means, for the MLflow Model's metadata; the words of each class (class labels), or a
    #: template for a score's words (``{value}``).
    output_meaning: str = ""
    class_names: tuple[str, ...] = ()
    score_words: str = "{value:.2f}"

    @property
    def integer_labels(self) -> bool:
        return self.classes is not None

    @property
    def long_targets(self) -> bool:
        """Whether a batch's labels are class ids (long tensors, for cross-entropy) rather than floats."""
        return self.loss == "cross_entropy"

    @property
    def label_dtype(self) -> str:
        """numpy dtype of the labels in ``prepared/``."""
        return "int64" if self.integer_labels else "float32"

    def predict(self, output: Any) -> Any:
        """A batch of predictions from the head's raw output (a tensor)."""
        if self.to_prediction is not None:
            return self.to_prediction(output)
        low, high = self.score_range  # type: ignore[misc]
        return output.float().clamp(low, high)

    def python_value(self, value: float) -> int | float:
        """One prediction as ``Predictor.predict`` returns it: int for class labels, float for scores."""
        return int(value) if self.integer_labels else float(value)

    def overall_term(self, metric: Any) -> Any:
        """This task's term of the overall score, from its dev metric (a float or an array of them)."""
        return OVERALL_TERMS[self.overall][0](metric)  # type: ignore[index]

    def meaning(self, value: float) -> str:
        """One prediction in words (the served model's ``meaning`` column)."""
        if self.class_names:
            return self.class_names[int(round(value))]
        return self.score_words.format(value=value)

    def format(self, value: float) -> str:
        """One prediction as written in ``predictions/<task>-<split>.csv`` and by ``palbert predict``."""
        return str(int(round(value))) if self.integer_labels else f"{value:.4f}"


STS_RANGE: tuple[float, float] = (0.0, 5.0)
#: The SST classes of the CS224N data.
SST_CLASSES: tuple[str, ...] = ("negative", "somewhat negative", "neutral", "somewhat positive", "positive")

TASK_SPECS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("sst", "sst", pair=False, outputs=5, loss="cross_entropy", score="accuracy", metric="sst_acc",
                 classes=5, to_prediction=_argmax, describe="class 0..4",
                 title="SST", metric_title="SST accuracy", column="SST acc",
                 example=("A gorgeous, witty, seductive movie.", ""),
                 output_meaning="sentiment class 0..4 (" + ", ".join(f"{i} {c}" for i, c in enumerate(SST_CLASSES)) + ")",
                 class_names=SST_CLASSES),
        TaskSpec("para", "quora", pair=True, outputs=1, loss="binary_cross_entropy", score="accuracy",
                 metric="para_acc", classes=2, to_prediction=_positive, describe="0/1",
                 title="paraphrase", metric_title="Quora accuracy", column="Para acc",
                 example=("How do I learn Python?", "What is the best way to learn Python?"),
                 output_meaning="1 if sentence2 is a paraphrase (duplicate question) of sentence1, else 0",
                 class_names=("not a paraphrase", "paraphrase")),
        TaskSpec("sts", "sts", pair=True, outputs=1, loss="mse", score="pearson", metric="sts_pearson",
                 classes=None, score_range=STS_RANGE, describe="similarity 0..5", overall="unit_from_r",
                 title="STS", metric_title="STS Pearson r", column="STS r",
                 example=("A cat sits on the mat.", "A cat is sitting on a mat."),
                 output_meaning="semantic similarity of the two sentences, 0 (unrelated) .. 5 (same meaning)",
                 score_words="similarity {value:.2f} of 5"),
    )
}
#: The tasks in table order (metrics/dev.json, Table 3, the PALs of the encoder).
TASKS: tuple[str, ...] = tuple(TASK_SPECS)
PAIR_TASKS: tuple[str, ...] = tuple(task for task, spec in TASK_SPECS.items() if spec.pair)
#: The tasks of the overall score, in the order its terms are summed: the paper's (sst, sts, para), then any other
#: in table order. A float sum depends on its order; this one keeps every overall bitwise what was recorded.
OVERALL_TASKS: tuple[str, ...] = tuple(sorted(
    (task for task, spec in TASK_SPECS.items() if spec.overall is not None),
    key=lambda task: (("sst", "sts", "para").index(task) if task in ("sst", "sts", "para") else 3, TASKS.index(task))))
#: The overall score in words (model card): "(sst_acc + (sts_pearson + 1) / 2 + para_acc) / 3".
OVERALL_FORMULA: str = "({}) / {}".format(
    " + ".join(OVERALL_TERMS[TASK_SPECS[task].overall][1].format(TASK_SPECS[task].metric)  # type: ignore[index]
               for task in OVERALL_TASKS), len(OVERALL_TASKS))
#: The main dataset of each task (the one scored on dev).
TASK_DATASET: dict[str, str] = {task: spec.dataset for task, spec in TASK_SPECS.items()}

#: Every dataset, in the order of its seed offset and of the sampling.csv columns, and the task head it trains.
DATASET_TASK: dict[str, str] = {
    "sst": "sst",
    "quora": "para",
    "sts": "sts",
    "snli": "para",
    "cfimdb": "sst",
}
DATASETS: tuple[str, ...] = tuple(DATASET_TASK)
#: Extra training datasets (``data.extra``, paper 4.1): those that are no task's main dataset.
EXTRA_DATASETS: tuple[str, ...] = tuple(d for d in DATASETS if d not in TASK_DATASET.values())


def dataset_spec(dataset: str) -> TaskSpec:
    """The spec of the task ``dataset`` trains."""
    return TASK_SPECS[DATASET_TASK[dataset]]
