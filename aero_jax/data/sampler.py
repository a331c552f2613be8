"""Step-indexed batch sampling: the indices of a batch are a pure function of (seed, step).

Example positions run on without end: global position p = step * global_batch_size + j.
Epoch e = p // num_examples visits the examples in its own permutation, drawn from
np.random.default_rng([seed, e]), so resuming at step s needs nothing but s, and every example
is seen exactly once per epoch even when a batch straddles two epochs. Each host reads a
contiguous, equal part of the global batch.
"""

from __future__ import annotations

import functools

import numpy as np

from aero_jax.config import ConfigError


def batch_indices(
    seed: int,
    step: int,
    global_batch_size: int,
    num_examples: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """Example indices int64 [global_batch_size // process_count] that this host reads at `step`."""
    _check_arguments(seed, step, global_batch_size, num_examples, process_index, process_count)
    per_host = global_batch_size // process_count
    first = step * global_batch_size + process_index * per_host
    positions_B = np.arange(first, first + per_host, dtype=np.int64)
    epochs_B, offsets_B = np.divmod(positions_B, num_examples)
    indices_B = np.empty(per_host, dtype=np.int64)
    for epoch in np.unique(epochs_B):
        in_epoch_B = epochs_B == epoch
        indices_B[in_epoch_B] = epoch_permutation(seed, int(epoch), num_examples)[offsets_B[in_epoch_B]]
    return indices_B


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The read-only order int64 [num_examples] in which epoch `epoch` visits the examples."""
    order_N = np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int64)
    order_N.flags.writeable = False
    return order_N


def _check_arguments(seed, step, global_batch_size, num_examples, process_index, process_count) -> None:
    """One clear error for each argument outside what the sampler accepts."""
    if num_examples < 1:
        raise ConfigError(f"num_examples={num_examples}: no examples: the split is empty")
    if seed < 0:
        raise ConfigError(f"seed={seed} is invalid; accepted: an integer >= 0")
    if step < 0:
        raise ConfigError(f"step={step} is invalid; accepted: an integer >= 0")
    if process_count < 1:
        raise ConfigError(f"process_count={process_count} is invalid; accepted: an integer >= 1")
    if not 0 <= process_index < process_count:
        raise ConfigError(f"process_index={process_index} is invalid; accepted: 0..{process_count - 1}")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ConfigError(
            f"global_batch_size={global_batch_size} is invalid; accepted: a positive multiple of "
            f"process_count={process_count}"
        )
