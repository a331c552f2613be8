"""Private-inference cost: nonlinear-operation counts, FLOPs, and a 2PC communication/latency model."""

from aero_jax.pi.cost import Workload, pi_cost, predict, workload

__all__ = ["Workload", "pi_cost", "predict", "workload"]
