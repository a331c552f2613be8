"""Refit the PI cost coefficients to the published rows and write coefficients.json.

    python -m aero_jax.pi.fit

A minimax fit: the non-negative coefficients that make the largest relative error over the rows
as small as possible (a linear program), one fit for communication and one for latency, each over
its features (aero_jax/pi/cost.py). Least squares would trade a few large errors for many small
ones; the published rows are few and noisy (deep-FFN pruning saves 32 s at T=128 but 8 s at
T=256), and the model is judged row by row. Prints every row's error in the fit and its
leave-one-out error (the row predicted by a fit to all the others).
"""

from __future__ import annotations

import json
from typing import Dict, List

import numpy as np
from scipy.optimize import linprog

from aero_jax import presets
from aero_jax.pi.cost import (CALIBRATION_FILE, COEFFICIENTS_FILE, TARGET_FEATURES, Workload, linear_layers,
                              predict, workload)

GPT2_WIDTH = dict(num_heads=12, d_model=768, d_ff=3072)


def _sota_workload(row: dict) -> Workload:
    """A He & Hofmann block: Q and K projections, one LayerNorm in all, the published FLOPs."""
    L, T, d = row["num_layers"], row["seq_len"], GPT2_WIDTH["d_model"]
    fused = "ScFuFFN" in row["arch"]
    per_layer = 2 * T * d * d if fused else 2 * 2 * T * d * GPT2_WIDTH["d_ff"]
    shapes = [(d, d)] if fused else [(d, GPT2_WIDTH["d_ff"]), (GPT2_WIDTH["d_ff"], d)]
    ffn = shapes * round(row["ffn_flops"] / per_layer)
    return Workload({"SM": (L * GPT2_WIDTH["num_heads"], T, T), "LN": (1, T, d)}, row["ffn_flops"], row["attn_flops"],
                    2 * T * d * row["vocab_size"],
                    linear_layers(T, num_layers=L, d_model=d, attention_projections=2, ffn_shapes=ffn))


def row_workload(row: dict) -> Workload:
    """The workload of a calibration row: from our config for the papers' presets, else from the row."""
    if row["arch"].startswith("SOTA"):
        return _sota_workload(row)
    return workload(presets.model_config(row["arch"], **GPT2_WIDTH, num_layers=row["num_layers"],
                                         vocab_size=row["vocab_size"], max_len=row["seq_len"]))


def calibration_rows() -> List[dict]:
    with open(CALIBRATION_FILE) as f:
        return json.load(f)["rows"]


def fit(rows: List[dict]) -> Dict[str, Dict[str, float]]:
    """{target: {feature: coefficient}}, non-negative, minimising the largest relative error."""
    row_features = [row_workload(r).features() for r in rows]
    coefficients = {}
    for target, names in TARGET_FEATURES.items():
        features = np.array([[values[f] for f in names] for values in row_features], float)
        scale = features.max(axis=0)
        scale[scale == 0] = 1.0
        y = np.array([r[target] for r in rows])
        solution = _minimax(features / scale / y[:, None])
        coefficients[target] = dict(zip(names, (solution / scale).tolist()))
    return coefficients


def _minimax(ratios_RxF: np.ndarray) -> np.ndarray:
    """w >= 0 minimising max_r |ratios_r . w - 1|: minimise e subject to -e <= ratios w - 1 <= e."""
    rows, features = ratios_RxF.shape
    ones = np.ones((rows, 1))
    result = linprog(np.r_[np.zeros(features), 1.0],
                     A_ub=np.block([[ratios_RxF, -ones], [-ratios_RxF, -ones]]),
                     b_ub=np.r_[np.ones(rows), -np.ones(rows)],
                     bounds=[(0, None)] * (features + 1), method="highs")
    if not result.success:
        raise RuntimeError(f"the minimax fit failed: {result.message}")
    return result.x[:features]


def fit_errors(rows: List[dict], coefficients: dict) -> List[dict]:
    """Each row's published and predicted cost and relative error."""
    out = []
    for r in rows:
        p = predict(row_workload(r), coefficients)
        out.append({"arch": r["arch"], "num_layers": r["num_layers"], "seq_len": r["seq_len"],
                    **{t: r[t] for t in TARGET_FEATURES},
                    **{f"{t}_predicted": round(p[t], 3) for t in TARGET_FEATURES},
                    **{f"{t}_error": round(p[t] / r[t] - 1, 4) for t in TARGET_FEATURES}})
    return out


def leave_one_out_errors(rows: List[dict]) -> List[dict]:
    """Each row predicted by a fit to all the other rows: how the model does on a row it has not seen."""
    out = []
    for i, row in enumerate(rows):
        coefficients = fit(rows[:i] + rows[i + 1:])
        out.append(fit_errors([row], coefficients)[0])
    return out


def main():
    rows = calibration_rows()
    coefficients = fit(rows)
    errors = fit_errors(rows, coefficients)
    held_out = leave_one_out_errors(rows)
    record = {"provenance": "non-negative minimax fit of the relative error over the rows of calibration.json "
                            "(python -m aero_jax.pi.fit); units: GB and minutes per feature unit, round trips "
                            "in minutes of the 80 ms WAN",
              "features": {t: list(names) for t, names in TARGET_FEATURES.items()}, **coefficients,
              "fit_errors": errors,
              "leave_one_out_errors": [{k: e[k] for k in ("arch", "num_layers", "seq_len", "comm_gb_error",
                                                          "latency_min_error")} for e in held_out]}
    with open(COEFFICIENTS_FILE, "w") as f:
        json.dump(record, f, indent=1)
    for e, h in zip(errors, held_out):
        print(f"{e['arch']:<30} L={e['num_layers']:<3} T={e['seq_len']:<4} comm {e['comm_gb']:6.2f} -> "
              f"{e['comm_gb_predicted']:6.2f} ({e['comm_gb_error']:+.1%}, held out {h['comm_gb_error']:+.1%})  "
              f"latency {e['latency_min']:6.2f} -> {e['latency_min_predicted']:6.2f} ({e['latency_min_error']:+.1%}, "
              f"held out {h['latency_min_error']:+.1%})")


if __name__ == "__main__":
    main()
