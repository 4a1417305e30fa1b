"""Dev metrics, the overall score, and the bootstrap interval of a difference."""

import numpy as np
import pytest
from scipy.stats import pearsonr

from palbert.metrics import accuracy, bootstrap_difference, overall, pearson, score


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


def test_overall_formula():
    # the paper's best row: sst 0.516, para 0.862, sts 0.866 -> 0.770 (Table 3)
    assert overall(0.516, 0.862, 0.866) == pytest.approx(0.770, abs=5e-4)
    assert overall(1.0, 1.0, 1.0) == 1.0 and overall(0.0, 0.0, -1.0) == 0.0


def dev_set(rng, n=300):
    return {"sst": rng.integers(0, 5, n), "para": rng.integers(0, 2, n), "sts": rng.uniform(0, 5, n)}


def overall_of(system, labels):
    return overall(*(score(task, system[task], labels[task]) for task in ("sst", "para", "sts")))


def noisy(rng, labels, error):
    """Predictions that are right with probability 1 - error (sts: labels plus noise)."""
    def flip(y, classes):
        return np.where(rng.random(len(y)) < error, rng.integers(0, classes, len(y)), y)

    sts = labels["sts"] + rng.normal(0, 5 * error, len(labels["sts"]))
    return {"sst": flip(labels["sst"], 5), "para": flip(labels["para"], 2), "sts": sts}


def test_bootstrap_interval_contains_the_observed_difference_and_is_seeded():
    rng = np.random.default_rng(1)
    labels = dev_set(rng)
    good, bad = noisy(rng, labels, 0.2), noisy(rng, labels, 0.6)
    result = bootstrap_difference(good, bad, labels, resamples=300, seed=5)
    assert result.difference == pytest.approx(overall_of(good, labels) - overall_of(bad, labels))
    assert 0 < result.low < result.difference < result.high
    assert result == bootstrap_difference(good, bad, labels, resamples=300, seed=5)


def test_bootstrap_of_a_system_against_itself_is_zero():
    rng = np.random.default_rng(2)
    labels = dev_set(rng, 100)
    system = noisy(rng, labels, 0.3)
    result = bootstrap_difference(system, system, labels, resamples=50, seed=0)
    assert result.difference == result.low == result.high == 0.0
