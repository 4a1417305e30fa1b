"""Index streams: sharding, 2×b == 1×2b, exact resume (also across world sizes), bucketing."""

import numpy as np
import pytest

from palbert.scoring import shard_indices
from palbert.train.streams import IndexStream


def take(stream, steps):
    return [stream.next_batch() for _ in range(steps)]


def ranks(n, b, world, seed=3, lengths=None):
    return [IndexStream(n, b, seed, rank=r, world_size=world, lengths=lengths) for r in range(world)]


@pytest.mark.parametrize("lengths", [None, "random"])
def test_shards_are_disjoint_and_cover_a_pass(lengths):
    n, b, world = 60, 5, 3  # 4 global batches of 15 per pass exactly
    lens = np.random.default_rng(0).integers(1, 50, n) if lengths else None
    streams = ranks(n, b, world, lengths=lens)
    seen = [sum(take(s, 4), []) for s in streams]
    assert all(len(rows) == 20 for rows in seen)
    assert sorted(sum(seen, [])) == list(range(n))


def test_two_ranks_with_b_see_what_one_rank_with_2b_sees():
    lens = np.random.default_rng(1).integers(1, 30, 37)
    for lengths in (None, lens):
        single = take(IndexStream(37, 8, seed=5, lengths=lengths), 12)
        r0, r1 = (take(s, 12) for s in ranks(37, 4, 2, seed=5, lengths=lengths))
        assert [a + b for a, b in zip(r0, r1)] == single


def test_tail_wraps_into_next_pass_with_equal_batches():
    n, b = 10, 4  # passes of 10 rows, batches of 4: batches 3 and 5 straddle a pass boundary
    stream = IndexStream(n, b, seed=0)
    rows = sum(take(stream, 5), [])  # 20 rows = exactly two passes
    assert all(len(batch) == b for batch in take(IndexStream(n, b, seed=0), 7))
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
    assert rows[:10] != rows[10:]  # a fresh permutation per pass


def test_global_batch_larger_than_the_data():
    stream = IndexStream(3, 4, seed=0, rank=1, world_size=2)
    batches = take(stream, 3)
    assert all(len(batch) == 4 and set(batch) <= {0, 1, 2} for batch in batches)


@pytest.mark.parametrize("lengths", [None, "random"])
def test_resume_equals_uninterrupted(lengths):
    lens = np.random.default_rng(2).integers(1, 30, 53) if lengths else None
    full = take(IndexStream(53, 6, seed=9, lengths=lens, bucket_batches=2), 30)
    first = IndexStream(53, 6, seed=9, lengths=lens, bucket_batches=2)
    head = take(first, 11)
    state = first.state_dict()
    assert all(isinstance(v, int) for v in state.values())
    resumed = IndexStream(53, 6, seed=9, lengths=lens, bucket_batches=2)
    resumed.load_state_dict(state)
    assert head + take(resumed, 19) == full


@pytest.mark.parametrize("lengths", [None, "random"])
def test_resume_with_a_different_world_size(lengths):
    n = 40
    lens = np.random.default_rng(3).integers(1, 30, n) if lengths else None
    two = ranks(n, 4, 2, seed=1, lengths=lens)  # global batch 8
    steps = [take(s, 3) for s in two]
    state = two[0].state_dict()
    assert two[1].state_dict() == state
    global_rows = [row for step in zip(*steps) for batch in step for row in batch]  # 24 rows
    three = ranks(n, 2, 3, seed=1, lengths=lens)  # global batch 6
    for s in three:
        s.load_state_dict(state)
    steps = [take(s, 3) for s in three]  # 18 rows: the 16 left in pass 0, then 2 of pass 1
    global_rows += [row for step in zip(*steps) for batch in step for row in batch]
    # the rest of the pass keeps its order: the global row sequence is that of an uninterrupted run
    uninterrupted = sum(take(IndexStream(n, 8, seed=1, lengths=lens), 5), [])
    assert global_rows[:n] == uninterrupted
    assert sorted(global_rows[:n]) == list(range(n))


def test_bucketing_groups_similar_lengths():
    n, b = 400, 8
    lengths = np.random.default_rng(4).integers(1, 200, n)
    plain, bucketed = IndexStream(n, b, seed=0), IndexStream(n, b, seed=0, lengths=lengths, bucket_batches=10)
    spread = lambda stream: np.mean([np.ptp(lengths[batch]) for batch in take(stream, 50)])
    assert spread(bucketed) < spread(plain) / 4
    # the batch order within a chunk is shuffled, not ascending
    firsts = [lengths[batch].min() for batch in take(IndexStream(n, b, seed=0, lengths=lengths, bucket_batches=10), 10)]
    assert firsts != sorted(firsts)


def test_load_rejects_another_dataset():
    state = IndexStream(10, 2, seed=0).state_dict()
    with pytest.raises(ValueError, match="n=10"):
        IndexStream(11, 2, seed=0).load_state_dict(state)


@pytest.mark.parametrize("n, world", [(10, 3), (2, 4), (9, 1), (0, 2)])
def test_shard_indices_contiguous_disjoint_covering(n, world):
    shards = [shard_indices(n, r, world) for r in range(world)]
    assert sum(shards, []) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
