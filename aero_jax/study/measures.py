"""What a claim measures, as functions of arrays or of one run's workdir: perplexity orders and gaps, the papers'
entropy ranges, and the temperatures' movement and effect. Each verdict function returns (verdict, why), the why
holding the numbers that decided it."""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from aero_jax.entropy import entropy_range_shares
from aero_jax.evaluate import load_run_config, run_evaluation, saved_params
from aero_jax.model import AeroLM, temperatures
from aero_jax.run_config import model_config_from

Measured = Tuple[str, float, float]  # (run, mean perplexity over seeds, spread = max - min over seeds)
Verdict = Tuple[str, str]  # (one of claims.VERDICTS, why)
RANGES = {"bottom": 0, "top": 3}  # the papers' [0, M/4) and [3M/4, M]
# The smallest gap a verdict reads as more than seed noise when a run has one seed (its spread is 0): the
# two-seed spreads of the study's first pass were 0.8% to 3.5% of the perplexity.
ONE_SEED_NOISE = 0.02


def mean_and_spread(name: str, values: Sequence[float]) -> Measured:
    """A run's perplexity over its seeds; a diverged seed (inf) makes the run inf."""
    if not all(math.isfinite(v) for v in values):
        return name, math.inf, 0.0
    return name, float(np.mean(values)), float(np.max(values) - np.min(values))


def noise(measured: Measured) -> float:
    """The gap below which a run's perplexity is a tie: its seed spread, and at least ONE_SEED_NOISE of it."""
    _, mean, spread = measured
    return max(spread, ONE_SEED_NOISE * mean) if math.isfinite(mean) else 0.0


def order_verdict(measured: Sequence[Measured]) -> Verdict:
    """reproduced: every step of the order holds by more than the noise (`noise`) of both runs; not reproduced:
    one is reversed by more than it; inconclusive otherwise."""
    steps = [(a, b, b[1] - a[1], max(noise(a), noise(b))) for a, b in zip(measured[:-1], measured[1:])]
    why = "; ".join(f"{a[0]} -> {b[0]}: {gap:+.3f} against noise {margin:.3f}" for a, b, gap, margin in steps)
    if all(gap > margin for _, _, gap, margin in steps):
        return "reproduced", why
    if any(-gap > margin for _, _, gap, margin in steps):
        return "not reproduced", why
    return "inconclusive", why


def gap_verdict(reference: Measured, variants: Sequence[Measured], max_increase: float) -> Verdict:
    """reproduced: every variant within max_increase of the reference; not reproduced: one beyond it by more than
    the noise of both; inconclusive otherwise."""
    base = reference[1]
    increases = [(v[0], (v[1] - base) / base, (noise(v) + noise(reference)) / base) for v in variants]
    why = ", ".join(f"{name} {i:+.1%} (noise {n:.1%})" for name, i, n in increases) + f"; limit +{max_increase:.0%}"
    if all(i <= max_increase for _, i, _ in increases):
        return "reproduced", why
    if any(i - n > max_increase for _, i, n in increases):
        return "not reproduced", why
    return "inconclusive", why


def range_share(head_LxH: np.ndarray, entropy_range: str, *, reference: str, seq_len: int) -> float:
    """The share of ALL L x H heads in the papers' bottom [0, M/4) or top [3M/4, M] entropy range, M being the
    largest head entropy observed in the model (the papers' histograms) or log T."""
    shares = entropy_range_shares(head_LxH, max_reference=reference, seq_len=seq_len)
    return float(np.asarray(shares)[RANGES[entropy_range]])


def _missing(shares: Dict[str, Optional[float]], names: Sequence[str]) -> Optional[Verdict]:
    absent = [n for n in names if shares[n] is None]
    return ("inconclusive", f"no evaluation of {', '.join(absent)}") if absent else None


def share_verdict(shares: Dict[str, Optional[float]], larger: Sequence[str], smaller: Sequence[str]) -> Verdict:
    """reproduced: every `larger` run above every `smaller` one; not reproduced: every one below; else
    inconclusive (also when a run has no evaluation)."""
    missing = _missing(shares, (*larger, *smaller))
    if missing:
        return missing
    low, high = min(shares[n] for n in larger), max(shares[n] for n in smaller)
    why = f"smallest share of {', '.join(larger)}: {low:.1%}; largest of {', '.join(smaller)}: {high:.1%}"
    if low > high:
        return "reproduced", why
    if max(shares[n] for n in larger) < min(shares[n] for n in smaller):
        return "not reproduced", why
    return "inconclusive", why


def trend_verdict(shares: Dict[str, Optional[float]], order: Sequence[str]) -> Verdict:
    """reproduced: strictly growing along `order`; not reproduced: falling somewhere and growing nowhere;
    inconclusive otherwise (flat, mixed, or without data)."""
    missing = _missing(shares, order)
    if missing:
        return missing
    values = [shares[n] for n in order]
    steps = [b - a for a, b in zip(values[:-1], values[1:])]
    why = " -> ".join(f"{v:.1%}" for v in values)
    if all(d > 0 for d in steps):
        return "reproduced", why
    if any(d < 0 for d in steps) and not any(d > 0 for d in steps):
        return "not reproduced", why
    return "inconclusive", why


def temperature_snapshots(workdir: str) -> Dict[int, np.ndarray]:
    """{step: t [layers, heads, positions]} from the initial value and every kept checkpoint of a run."""
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


def temperature_intervention(run, val_rows: np.ndarray, scales: Sequence[float]) -> Dict[float, np.ndarray]:
    """{c: head entropy [layers, heads]} of a restored SM(t) run evaluated with every t multiplied by c
    (`temperature_scale`, exact for log and raw t alike) and its weights fixed."""
    return {scale: np.asarray(run_evaluation(run, val_rows, model=AeroLM(run.model.config.replace(
        temperature_scale=scale)))["head_entropy"]) for scale in scales}


def rising_heads(entropy_by_scale: Dict[float, np.ndarray], tolerance: float = 1e-6) -> Tuple[np.ndarray,
                                                                                               np.ndarray]:
    """([layers, heads] whose entropy rises with c: never falls by more than `tolerance` nats and ends more than
    `tolerance` higher than it starts; [layers, heads] whose entropy falls by more than it at some step), c in
    increasing order. A head that does not move (one-hot or uniform at every c) is in neither."""
    stacked = np.stack([np.asarray(entropy_by_scale[c], float) for c in sorted(entropy_by_scale)])
    falls = np.any(np.diff(stacked, axis=0) < -tolerance, axis=0)
    return ~falls & (stacked[-1] - stacked[0] > tolerance), falls


def intervention_verdict(rises: np.ndarray, falls: np.ndarray) -> Verdict:
    """reproduced: every head's entropy rises with c; not reproduced: one falls; inconclusive otherwise (a head
    whose entropy does not move)."""
    why = f"{rises.mean():.0%} of the heads rise with c, {falls.mean():.0%} fall"
    return ("reproduced" if rises.all() else "not reproduced" if falls.any() else "inconclusive"), why
