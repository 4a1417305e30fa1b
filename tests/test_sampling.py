"""Task samplers: the annealed α and probabilities by hand, orders, the SNLI factor, determinism."""

import math

import pytest

from palbert.train.sampling import annealed_alpha, dataset_batch_sizes, make_task_sampler

SIZES = {"sst": 100, "quora": 400, "sts": 25}
BATCHES = {"sst": 10, "quora": 10, "sts": 10}


def sampler(kind="annealed", sizes=SIZES, batch_sizes=BATCHES, world_size=1, steps=200, epochs=3, seed=7, factor=10.0):
    return make_task_sampler(kind, sizes, batch_sizes, world_size, steps, epochs, seed, factor)


def test_annealed_alpha_per_epoch():
    s = sampler(epochs=3)
    assert [s.alpha(e) for e in (1, 2, 3)] == pytest.approx([1.0, 0.6, 0.2])
    assert annealed_alpha(1, 1) == 1.0
    assert sampler(epochs=1).alpha(1) == 1.0


def test_annealed_probabilities_by_hand():
    s = sampler(epochs=3)
    # epoch 1, alpha 1: sizes / 525
    assert s.probabilities(1) == pytest.approx({"sst": 100 / 525, "quora": 400 / 525, "sts": 25 / 525})
    # epoch 3, alpha 0.2: 100^0.2 = 2.5119, 400^0.2 = 3.3145, 25^0.2 = 1.9037; total 7.7301
    p3 = s.probabilities(3)
    assert p3 == pytest.approx({"sst": 2.5119 / 7.7301, "quora": 3.3145 / 7.7301, "sts": 1.9037 / 7.7301}, abs=1e-4)
    assert list(p3) == ["sst", "quora", "sts"]
    # epoch 2, alpha 0.6: weights 10^1.2, 20^1.2, 5^1.2
    w = [10**1.2, 20**1.2, 5**1.2]
    assert list(s.probabilities(2).values()) == pytest.approx([x / sum(w) for x in w])


def test_proportional_and_uniform():
    assert sampler("proportional").probabilities(3) == pytest.approx({"sst": 100 / 525, "quora": 400 / 525, "sts": 25 / 525})
    assert sampler("uniform").probabilities(1) == pytest.approx({"sst": 1 / 3, "quora": 1 / 3, "sts": 1 / 3})
    assert sampler("proportional").alpha(2) == 1.0 and sampler("uniform").alpha(2) == 0.0


def test_snli_factor_divides_then_renormalises():
    sizes = {"sst": 100, "quora": 100, "snli": 200}
    batches = dict.fromkeys(sizes, 10)
    p = sampler("annealed", sizes, batches, epochs=1, factor=10.0).probabilities(1)
    # weights 100, 100, 200/10 = 20 -> total 220
    assert p == pytest.approx({"sst": 100 / 220, "quora": 100 / 220, "snli": 20 / 220})
    assert sampler("annealed", sizes, batches, epochs=1, factor=1.0).probabilities(1)["snli"] == pytest.approx(0.5)


def test_annealed_plan_length_and_frequencies():
    s = sampler(steps=4000, epochs=3)
    for epoch in (1, 3):
        plan = s.epoch_plan(epoch)
        assert len(plan) == s.steps_in_epoch(epoch) == 4000
        for name, p in s.probabilities(epoch).items():
            assert plan.count(name) / 4000 == pytest.approx(p, abs=0.03)
    assert s.total_steps() == 12000


def test_sequential_order_groups_by_task():
    sizes = {"sst": 25, "quora": 30, "sts": 10, "snli": 5, "cfimdb": 8}
    batches = dataset_batch_sizes(sizes, batch_size=10, cfimdb_batch_size=4)
    assert batches["cfimdb"] == 4 and batches["sst"] == 10
    s = sampler("sequential", sizes, batches, steps=999, epochs=2)
    expected = ["sst"] * 3 + ["cfimdb"] * 2 + ["quora"] * 3 + ["snli"] + ["sts"]
    assert s.epoch_plan(1) == expected == s.epoch_plan(2)
    assert s.steps_in_epoch(1) == 10 and s.total_steps() == 20
    assert s.probabilities(1) is None and s.alpha(1) is None


def test_sequential_counts_global_batches():
    s = sampler("sequential", world_size=2)  # global batch 20: sst 5, quora 20, sts 2
    assert s.epoch_plan(1) == ["sst"] * 5 + ["quora"] * 20 + ["sts"] * 2


def test_round_robin_until_smallest_is_exhausted():
    s = sampler("round_robin")  # batches per pass: sst 10, quora 40, sts 3
    assert s.epoch_plan(1) == ["sst", "quora", "sts"] * 3
    assert s.steps_in_epoch(2) == 9 and s.probabilities(1) is None


def test_plan_is_a_pure_function_of_seed_and_epoch():
    rank0, rank1 = sampler(seed=123), sampler(seed=123)
    for epoch in (1, 2, 3):
        assert rank0.epoch_plan(epoch) == rank1.epoch_plan(epoch)
    # asking again, or in another order (a resumed run), gives the same plan
    assert rank0.epoch_plan(2) == sampler(seed=123).epoch_plan(2)
    assert rank0.epoch_plan(1) != rank0.epoch_plan(2)
    assert sampler(seed=124).epoch_plan(1) != rank0.epoch_plan(1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "shuffled"}, "sampling kind"),
        ({"sizes": {"imdb": 3}}, "unknown dataset"),
        ({"sizes": {"sst": 0}, "batch_sizes": {"sst": 1}}, "'sst' has 0"),
        ({"batch_sizes": {"sst": 10, "quora": 10}}, "'sts': batch size"),
        ({"factor": 0.0}, "snli_prob_factor"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sampler(**kwargs)


def test_epoch_out_of_range():
    with pytest.raises(ValueError, match="epoch 4"):
        sampler(epochs=3).epoch_plan(4)
    assert math.isclose(sampler(epochs=2).alpha(2), 0.2)


def capped(kind, sizes, steps, batch_sizes=None):
    batch_sizes = batch_sizes or {name: 10 for name in sizes}
    return make_task_sampler(kind, sizes, batch_sizes, 1, steps, 3, 7, 10.0, cap_passes=True)


def test_capped_sequential_keeps_order_and_shrinks_blocks_in_proportion():
    # whole passes: sst 10, quora 40, sts 3 batches (53); capped at 20: shares 3.77, 15.09, 1.13
    s = capped("sequential", SIZES, 20)
    assert s.sequential_blocks() == {"sst": 4, "quora": 15, "sts": 1}
    plan = s.epoch_plan(1)
    assert plan == ["sst"] * 4 + ["quora"] * 15 + ["sts"] * 1
    assert s.total_steps() == 60
    # a cap above the whole pass changes nothing; without the flag the pass is whole
    assert capped("sequential", SIZES, 500).epoch_plan(1) == sampler("sequential").epoch_plan(1)
    assert len(sampler("sequential", steps=20).epoch_plan(1)) == 53


def test_capped_round_robin_takes_equal_batches_up_to_the_cap():
    sizes = {"sst": 100, "quora": 400, "sts": 100}  # 10 rounds uncapped
    assert len(sampler("round_robin", sizes=sizes).epoch_plan(1)) == 30
    plan = capped("round_robin", sizes, 14).epoch_plan(2)
    assert plan == ["sst", "quora", "sts"] * 4  # 14 // 3 rounds
    assert capped("round_robin", sizes, 1000).steps_in_epoch(1) == 30  # the data still bounds it


def test_capped_sequential_needs_room_for_every_dataset():
    with pytest.raises(ValueError, match="steps_per_epoch 2 cannot hold"):
        capped("sequential", SIZES, 2).epoch_plan(1)
