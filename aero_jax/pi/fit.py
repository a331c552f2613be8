"""Refit the PI cost coefficients to the published rows and write coefficients.json.

    python -m aero_jax.pi.fit

Non-negative least squares on relative errors (each row weighted by 1 / its value), one fit for
communication and one for latency; prints the fit error of every row.
"""

from __future__ import annotations

import json
from typing import List

import numpy as np
from scipy.optimize import nnls

from aero_jax import presets
from aero_jax.pi.cost import CALIBRATION_FILE, COEFFICIENTS_FILE, FEATURES, Workload, predict, workload

GPT2_SMALL = dict(num_layers=12, num_heads=12, d_model=768, d_ff=3072, vocab_size=50257)


def _sota_workload(row: dict) -> Workload:
    """A He & Hofmann block: one LayerNorm, the published FLOPs, softmax as in every row."""
    c = GPT2_SMALL
    T = row["seq_len"]
    return Workload({"SM": (c["num_layers"] * c["num_heads"], T, T), "LN": (1, T, c["d_model"])},
                    row["ffn_flops"], row["attn_flops"], 2 * T * c["d_model"] * c["vocab_size"])


def row_workload(row: dict) -> Workload:
    """The workload of a calibration row: from our config for the papers' presets, else from the row."""
    if row["arch"].startswith("SOTA"):
        return _sota_workload(row)
    return workload(presets.model_config(row["arch"], **GPT2_SMALL, max_len=row["seq_len"]))


def calibration_rows() -> List[dict]:
    with open(CALIBRATION_FILE) as f:
        return json.load(f)["rows"]


def fit(rows: List[dict]) -> dict:
    features = np.array([[row_workload(r).features()[f] for f in FEATURES] for r in rows], float)
    scale = features.max(axis=0)
    scale[scale == 0] = 1.0
    coefficients = {}
    for target in ("comm_gb", "latency_min"):
        y = np.array([r[target] for r in rows])
        weighted = features / scale / y[:, None]
        solution, _ = nnls(weighted, np.ones_like(y))
        coefficients[target] = dict(zip(FEATURES, (solution / scale).tolist()))
    return coefficients


def fit_errors(rows: List[dict], coefficients: dict) -> List[dict]:
    """Each row's published and predicted cost and relative error."""
    out = []
    for r in rows:
        p = predict(row_workload(r), coefficients)
        out.append({"arch": r["arch"], "seq_len": r["seq_len"],
                    **{t: r[t] for t in ("comm_gb", "latency_min")},
                    **{f"{t}_predicted": round(p[t], 3) for t in ("comm_gb", "latency_min")},
                    **{f"{t}_error": round(p[t] / r[t] - 1, 4) for t in ("comm_gb", "latency_min")}})
    return out


def main():
    rows = calibration_rows()
    coefficients = fit(rows)
    errors = fit_errors(rows, coefficients)
    record = {"provenance": "non-negative least squares on relative error over the rows of calibration.json "
                            "(python -m aero_jax.pi.fit); units: GB and minutes per feature unit",
              "features": list(FEATURES), **coefficients, "fit_errors": errors}
    with open(COEFFICIENTS_FILE, "w") as f:
        json.dump(record, f, indent=1)
    for e in errors:
        print(f"{e['arch']:<40} T={e['seq_len']:<4} comm {e['comm_gb']:6.2f} -> {e['comm_gb_predicted']:6.2f} "
              f"({e['comm_gb_error']:+.1%})  latency {e['latency_min']:6.2f} -> {e['latency_min_predicted']:6.2f} "
              f"({e['latency_min_error']:+.1%})")


if __name__ == "__main__":
    main()
