"""Dev metrics, the overall score, and the two-level bootstrap of Table 3 rows."""

import numpy as np
import pytest
from scipy.stats import pearsonr

from palbert.metrics import accuracy, bootstrap_rows, overall, pearson, score, task_scores
from palbert.tasks import OVERALL_FORMULA, TASK_SPECS, TASKS


def test_accuracy_and_pearson():
    assert accuracy([0, 1, 2, 4], [0, 1, 3, 4]) == 0.75
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(x, y) == pytest.approx(pearsonr(x, y)[0])
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0  # undefined: reported as 0, not NaN
    # evaluate passes float64 class predictions against int64 labels
    assert accuracy(np.array([0.0, 1.0, 2.0]), np.array([0, 1, 3])) == pytest.approx(2 / 3)


def test_constant_input_warns_and_scores_zero(caplog):
    with caplog.at_level("WARNING", logger="palbert.metrics"):
        assert pearson([2.5, 2.5, 2.5], [1.0, 2.0, 3.0]) == 0.0
        assert score("sts", [0.0, 1.0, 2.0], [3.0, 3.0, 3.0]) == 0.0
    assert caplog.text.count("constant predictions or labels; reporting r = 0") == 2


def test_score_per_task():
    assert score("sst", [1, 2], [1, 3]) == 0.5
    assert score("para", [1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
    assert score("sts", [0.0, 2.5, 5.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown task"):
        score("nli", [1], [1])
    with pytest.raises(ValueError, match="1-D of one length"):
        score("sst", [1, 2], [1])


def _dev(sst: float, para: float, sts: float) -> dict[str, float]:
    return {"sst_acc": sst, "para_acc": para, "sts_pearson": sts}


def test_overall_formula():
    # the paper's best row: sst 0.516, para 0.862, sts 0.866 -> 0.770 (Table 3)
    assert overall(_dev(0.516, 0.862, 0.866)) == pytest.approx(0.770, abs=5e-4)
    assert overall(_dev(1.0, 1.0, 1.0)) == 1.0 and overall(_dev(0.0, 0.0, -1.0)) == 0.0
    assert OVERALL_FORMULA == "(sst_acc + (sts_pearson + 1) / 2 + para_acc) / 3"


def test_overall_is_bitwise_the_papers_sum_from_the_task_specs():
    """The spec-driven overall sums its terms in the paper's order, so recorded scores stay bitwise equal."""
    rng = np.random.default_rng(0)
    sst, para, sts = rng.uniform(0, 1, 10_000), rng.uniform(0, 1, 10_000), rng.uniform(-1, 1, 10_000)
    assert np.array_equal(overall(_dev(sst, para, sts)), (sst + (sts + 1) / 2 + para) / 3)
    assert all(overall(_dev(a, b, c)) == (a + (c + 1) / 2 + b) / 3 for a, b, c in zip(sst[:500], para, sts))


def dev_set(rng, n=300):
    return {"sst": rng.integers(0, 5, n), "para": rng.integers(0, 2, n), "sts": rng.uniform(0, 5, n)}


def overall_of(system, labels):
    return overall({TASK_SPECS[task].metric: score(task, system[task], labels[task]) for task in TASKS})


def noisy(rng, labels, error):
    """Predictions that are right with probability 1 - error (sts: labels plus noise)."""
    def flip(y, classes):
        return np.where(rng.random(len(y)) < error, rng.integers(0, classes, len(y)), y)

    sts = labels["sts"] + rng.normal(0, 5 * error, len(labels["sts"]))
    return {"sst": flip(labels["sst"], 5), "para": flip(labels["para"], 2), "sts": sts}


def test_vectorised_scores_are_the_single_sample_scores():
    rng = np.random.default_rng(3)
    labels = dev_set(rng, 120)
    system = noisy(rng, labels, 0.4)
    rows = rng.integers(0, 120, (7, 120))
    for task in ("sst", "para", "sts"):
        many = task_scores(task, system[task], labels[task], rows)
        assert many == pytest.approx([score(task, system[task][r], labels[task][r]) for r in rows])
    assert task_scores("sts", np.full(120, 2.5), labels["sts"], rows).tolist() == [0.0] * 7  # constant: r = 0


def test_one_seed_per_row_is_the_paired_bootstrap_over_examples():
    """With one seed a row's draws are the plain paired bootstrap, checked against a loop over metrics.score."""
    rng = np.random.default_rng(1)
    labels = dev_set(rng)
    good, bad = noisy(rng, labels, 0.2), noisy(rng, labels, 0.6)
    result = bootstrap_rows({"good": [good], "bad": [bad]}, labels, resamples=200, seed=5)
    example_rng = np.random.default_rng([5, 0])
    draws = {task: example_rng.integers(0, len(labels[task]), (200, len(labels[task]))) for task in labels}
    oracle = [overall_of({t: good[t][draws[t][r]] for t in labels}, {t: labels[t][draws[t][r]] for t in labels})
              - overall_of({t: bad[t][draws[t][r]] for t in labels}, {t: labels[t][draws[t][r]] for t in labels})
              for r in range(200)]
    difference = result.difference("good", "bad")
    assert difference.difference == pytest.approx(overall_of(good, labels) - overall_of(bad, labels))
    assert (difference.low, difference.high) == pytest.approx(tuple(np.percentile(oracle, [2.5, 97.5])))
    assert difference.excludes_zero and 0 < difference.low < difference.difference < difference.high
    again = bootstrap_rows({"good": [good], "bad": [bad]}, labels, resamples=200, seed=5)
    assert again.difference("good", "bad") == difference  # seeded


def test_a_row_against_itself_is_zero_and_equal_rows_are_within_noise():
    rng = np.random.default_rng(2)
    labels = dev_set(rng, 200)
    system = noisy(rng, labels, 0.3)
    same = bootstrap_rows({"a": [system], "b": [system]}, labels, resamples=50).difference("a", "b")
    assert same.difference == same.low == same.high == 0.0
    seeds_a = [noisy(rng, labels, 0.3) for _ in range(3)]
    seeds_b = [noisy(rng, labels, 0.3) for _ in range(3)]
    equal = bootstrap_rows({"a": seeds_a, "b": seeds_b}, labels, resamples=400).difference("a", "b")
    assert equal.low < 0 < equal.high and not equal.excludes_zero


def test_seed_spread_widens_a_rows_interval():
    """Same dev examples, same mean quality: a row whose seeds disagree gets a wider interval."""
    rng = np.random.default_rng(4)
    labels = dev_set(rng, 400)
    steady = [noisy(rng, labels, 0.35) for _ in range(3)]
    erratic = [noisy(rng, labels, error) for error in (0.1, 0.35, 0.6)]
    result = bootstrap_rows({"steady": steady, "erratic": erratic}, labels, resamples=400)
    width = {row: np.subtract(*result.interval(row)[::-1]) for row in ("steady", "erratic")}
    assert width["erratic"] > 2 * width["steady"]
    assert set(result.point) == {"sst_acc", "para_acc", "sts_pearson", "overall"}
    low, high = result.interval("steady", "sst_acc")
    assert low < result.point["sst_acc"]["steady"] < high


def test_bootstrap_rows_rejects_misaligned_predictions():
    rng = np.random.default_rng(5)
    labels = dev_set(rng, 50)
    short = {**noisy(rng, labels, 0.3), "sts": np.zeros(49)}
    with pytest.raises(ValueError, match="row a, sts: 49 predictions for 50 labels"):
        bootstrap_rows({"a": [short]}, labels, resamples=10)
