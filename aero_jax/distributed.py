"""Joining a multi-process run: explicit coordinator flags, or a TPU pod slice detected from its environment."""

from __future__ import annotations

import os
from typing import Optional

import jax
from jax.experimental import multihost_utils

from aero_jax.config import ConfigError


def on_multihost_tpu() -> bool:
    """True on a TPU VM that belongs to a slice of several hosts."""
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
    """Call jax.distributed.initialize when the run has several processes, else do nothing.

    Give all three values for clusters without auto-detection (CPU collectives use gloo);
    on a multi-host TPU slice JAX finds them itself.
    """
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError("coordinator_address, num_processes and process_id are invalid alone; accepted: all "
                          "three together, or none (TPU pod slices are detected)")
    if all(given):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU devices use it
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    elif on_multihost_tpu():
        jax.distributed.initialize()


def reached_preemption_point(step: int) -> bool:
    """True on every process at the same step once any of them was told to stop (multi-process only)."""
    if jax.process_count() == 1:
        return False
    return multihost_utils.reached_preemption_sync_point(step)
