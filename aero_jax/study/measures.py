"""What a claim measures, as functions of arrays or of one run's workdir: perplexity orders and gaps, the papers'
entropy ranges, and the temperatures' movement and effect."""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from aero_jax.entropy import entropy_range_shares

Measured = Tuple[str, float, float]  # (run, mean perplexity over seeds, spread = max - min over seeds)
RANGES = {"bottom": 0, "top": 3}  # the papers' [0, M/4) and [3M/4, M]
SHARE_REFERENCES = ("observed", "log_t")  # M: the largest head entropy of the model (the papers'), or log T


def mean_and_spread(name: str, values: Sequence[float]) -> Measured:
    """A run's perplexity over its seeds; a diverged seed (inf) makes the run inf."""
    if not all(math.isfinite(v) for v in values):
        return name, math.inf, 0.0
    return name, float(np.mean(values)), float(np.max(values) - np.min(values))


def order_verdict(measured: Sequence[Measured]) -> str:
    """reproduced: every step of the order holds by more than the seed spread; not reproduced: one is reversed by
    more than it; inconclusive otherwise."""
    steps = list(zip(measured[:-1], measured[1:]))
    if all(b[1] - a[1] > max(a[2], b[2]) for a, b in steps):
        return "reproduced"
    if any(a[1] - b[1] > max(a[2], b[2]) for a, b in steps):
        return "not reproduced"
    return "inconclusive"


def gap_verdict(reference: Measured, variants: Sequence[Measured], max_increase: float) -> str:
    """reproduced: every variant within max_increase of the reference; not reproduced: one beyond it by more than
    the seed spreads; inconclusive otherwise."""
    _, base, base_spread = reference
    increases = [(m - base) / base for _, m, _ in variants]
    noise = [(s + base_spread) / base for _, _, s in variants]
    if all(i <= max_increase for i in increases):
        return "reproduced"
    if any(i - n > max_increase for i, n in zip(increases, noise)):
        return "not reproduced"
    return "inconclusive"


def range_share(head_LxH: np.ndarray, entropy_range: str, *, reference: str, seq_len: int) -> float:
    """The share of ALL L x H heads in the papers' bottom [0, M/4) or top [3M/4, M] entropy range, M being the
    largest head entropy observed in the model (the papers' histograms) or log T."""
    shares = entropy_range_shares(head_LxH, max_reference=reference, seq_len=seq_len)
    return float(np.asarray(shares)[RANGES[entropy_range]])


def share_verdict(shares: Dict[str, Optional[float]], larger: Sequence[str], smaller: Sequence[str]) -> str:
    """reproduced: every `larger` run above every `smaller` one; not reproduced: every one below; else
    inconclusive (also when a run has no evaluation)."""
    if any(shares[n] is None for n in (*larger, *smaller)):
        return "inconclusive"
    if min(shares[n] for n in larger) > max(shares[n] for n in smaller):
        return "reproduced"
    if max(shares[n] for n in larger) < min(shares[n] for n in smaller):
        return "not reproduced"
    return "inconclusive"


def trend_verdict(shares: Sequence[Optional[float]]) -> str:
    """reproduced: strictly growing; not reproduced: never growing; inconclusive otherwise or without data."""
    if any(v is None for v in shares):
        return "inconclusive"
    steps = [b - a for a, b in zip(shares[:-1], shares[1:])]
    return "reproduced" if all(d > 0 for d in steps) else "not reproduced" if all(d <= 0 for d in steps) else \
        "inconclusive"


def temperature_snapshots(workdir: str) -> Dict[int, np.ndarray]:
    """{step: t [layers, heads, positions]} from the initial value and every kept checkpoint of a run."""
    from aero_jax.evaluate import load_run_config, saved_params
    from aero_jax.model import temperatures
    from aero_jax.run_config import model_config_from

    model_config = model_config_from(load_run_config(workdir).model)
    snapshots = {0: np.full((model_config.num_layers, model_config.num_heads, model_config.max_len),
                            model_config.temperature_init)}
    for step, params in saved_params(workdir):
        snapshots[step] = np.stack([np.asarray(temperatures(params[f"block_{layer}"]["attn"], model_config))
                                    for layer in range(model_config.num_layers)])
    return snapshots


def temperature_movement(t_LxHxT: np.ndarray, t_init: float) -> np.ndarray:
    """[layers, 3]: the min, median and max of t / t_init over each layer's heads and positions."""
    ratio = np.asarray(t_LxHxT, float).reshape(len(t_LxHxT), -1) / t_init
    return np.stack([ratio.min(1), np.median(ratio, 1), ratio.max(1)], axis=1)


def scale_temperatures(params, model_config, scale: float):
    """The parameters with every attention temperature t multiplied by `scale`, nothing else changed."""
    from aero_jax.model import temperature_name

    name = temperature_name(model_config)
    shift = (lambda p: p * scale) if model_config.temperature_param == "raw" else (lambda p: p + math.log(scale))
    blocks = {key: ({**block, "attn": {**block["attn"], name: shift(block["attn"][name])}}
                    if key.startswith("block_") else block) for key, block in params.items()}
    return blocks


def temperature_intervention(run, val_rows: np.ndarray, scales: Sequence[float]) -> Dict[float, np.ndarray]:
    """{c: head entropy [layers, heads]} of a restored SM(t) run evaluated with every t scaled by c and its weights
    fixed: the papers' property, at fixed logits raising t raises a head's entropy, measured on its own heads."""
    from aero_jax.evaluate import run_evaluation

    config = run.model.config
    return {scale: np.asarray(run_evaluation(run, val_rows, scale_temperatures(run.state.params, config, scale))[
        "head_entropy"]) for scale in scales}


def monotone_heads(entropy_by_scale: Dict[float, np.ndarray], tolerance: float = 1e-6) -> Tuple[float, float]:
    """(share of heads whose entropy rises with c: never falls by more than `tolerance` nats and ends higher than it
    starts; share whose entropy falls at some step by more than `tolerance`), c in increasing order. A head that
    does not move (exactly one-hot or uniform at every c) is in neither."""
    stacked = np.stack([np.asarray(entropy_by_scale[c], float).ravel() for c in sorted(entropy_by_scale)])
    falls = np.any(np.diff(stacked, axis=0) < -tolerance, axis=0)
    rises = ~falls & (stacked[-1] > stacked[0])
    return float(np.mean(rises)), float(np.mean(falls))


def intervention_verdict(rising: float, falling: float) -> str:
    """reproduced: every head's entropy rises with c; not reproduced: one falls; inconclusive otherwise (a head
    whose entropy does not move, e.g. already uniform)."""
    return "reproduced" if rising == 1.0 else "not reproduced" if falling > 0 else "inconclusive"
