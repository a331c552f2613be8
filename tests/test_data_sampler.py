"""The step-indexed sampler: pure, disjoint across hosts, exactly once per epoch."""

import numpy as np
import pytest

from aero_jax.config import ConfigError
from aero_jax.data import batch_indices


def _epoch_stream(seed, steps, global_batch_size, num_examples):
    return np.concatenate([batch_indices(seed, s, global_batch_size, num_examples) for s in range(steps)])


def test_same_arguments_give_the_same_batch():
    first = batch_indices(3, 17, 8, 100)
    again = batch_indices(3, 17, 8, 100)
    assert first.dtype == np.int64 and first.shape == (8,)
    np.testing.assert_array_equal(first, again)


def test_different_seeds_give_different_orders():
    assert not np.array_equal(_epoch_stream(0, 4, 8, 32), _epoch_stream(1, 4, 8, 32))


def test_hosts_read_disjoint_contiguous_parts_of_the_global_batch():
    global_batch = batch_indices(5, 9, 12, 50)
    parts = [batch_indices(5, 9, 12, 50, process_index=i, process_count=3) for i in range(3)]
    assert all(p.shape == (4,) for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), global_batch)
    assert len(set(np.concatenate(parts).tolist())) == 12


@pytest.mark.parametrize("global_batch_size, num_examples", [(8, 20), (6, 6), (7, 3)])
def test_every_example_once_per_epoch_when_batches_straddle_epochs(global_batch_size, num_examples):
    epochs = 5
    steps = -(-epochs * num_examples // global_batch_size)  # enough steps to cover every epoch
    stream = _epoch_stream(11, steps, global_batch_size, num_examples)[: epochs * num_examples]
    for epoch_ids in stream.reshape(epochs, num_examples):
        np.testing.assert_array_equal(np.sort(epoch_ids), np.arange(num_examples))


def test_a_batch_spanning_an_epoch_boundary_takes_both_permutations():
    num_examples, seed = 10, 2
    batch = batch_indices(seed, 1, 8, num_examples)  # positions 8..15: epoch 0 then epoch 1
    epoch0 = np.random.default_rng([seed, 0]).permutation(num_examples)
    epoch1 = np.random.default_rng([seed, 1]).permutation(num_examples)
    np.testing.assert_array_equal(batch, np.concatenate([epoch0[8:], epoch1[:6]]))


def test_returned_batches_do_not_alias_the_cached_permutation():
    batch = batch_indices(0, 0, 4, 10)
    batch[:] = -1
    assert (batch_indices(0, 0, 4, 10) >= 0).all()


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((0, 0, 8, 0), {}, "no examples: the split is empty"),
        ((0, -1, 8, 10), {}, "step=-1"),
        ((0, 0, 10, 10), dict(process_count=4), "multiple of process_count=4"),
        ((0, 0, 8, 10), dict(process_index=2, process_count=2), "process_index=2"),
        ((-3, 0, 8, 10), {}, "seed=-3"),
    ],
)
def test_bad_arguments_are_refused(args, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        batch_indices(*args, **kwargs)
