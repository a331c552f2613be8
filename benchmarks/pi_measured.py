"""Private inference of GPT-2 small measured under SecretFlow SPU (Cheetah, FM64): the tables of docs/pi_cost.md.

    .venv/bin/python benchmarks/pi_measured.py [--seq-len 128] [--json benchmarks/results/pi_measured.json]

Needs `make pi-env`. At GPT-2 small (L=12, H=12, d=768, d_ff=3072, V=50257) one block of each architecture
is measured and scaled to twelve; the embedding, final LayerNorm and LM head, which do not depend on the
blocks, are measured once (with SM+LN+G) and added to every row. Weights are random (the cost does not
depend on their values). Prints the calibration table (bytes per element of each operation at the
papers' shapes, measured, beside the cost model's fitted value) and the model table (measured, the cost
model, the published SecretFlow row). About 30 minutes on 2 cores, at most about 12 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

from aero_jax import presets
from aero_jax.model import AeroLM, init_variables, split_variables
from aero_jax.pi import cost, fit, measure

# (row label, preset, overrides): the presets follow the released code's exact (erf) GELU; GPT-2's tanh form, which
# the papers' engine ran, is measured beside it.
ARCHS = (("SM+LN+G", "SM+LN+G", {}), ("SM+LN+G, tanh GELU", "SM+LN+G", {"gelu_form": "tanh"}),
         ("SM+LN+R", "SM+LN+R", {}), ("SM+ScFuFFN", "SM+ScFuFFN", {}),
         ("EReg(SM(t)+ScFuFFN)", "EReg(SM(t)+ScFuFFN)", {}))
VOCABULARY_KINDS = ("embedding", "LM head")


def measured_block(name: str, overrides: dict, seq_len: int, *, with_vocabulary: bool) -> tuple:
    """(config, worker result, traffic) of one block of `name` at GPT-2 small, random weights."""
    c = presets.model_config(name, max_len=seq_len, **overrides)
    params, state = split_variables(init_variables(AeroLM(c), jax.random.key(0)))
    tokens = np.random.default_rng(0).integers(0, c.vocab_size, seq_len)
    start = time.perf_counter()

    def progress(line):
        print(f"  [{name}, {time.perf_counter() - start:5.0f} s] {line}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="aero-pi-bench-") as model_dir:
        measure.write_model(c, params, state, tokens, model_dir)
        result, traffic = measure.run_worker(model_dir, layers=1, protocol="cheetah", python=measure.pi_python(),
                                             blocks_only=not with_vocabulary, progress=progress)
    return c, result, traffic


def whole_model(c, block_segments, vocabulary_segments, traffic) -> dict:
    """Kind totals of all L blocks (the measured one scaled) plus the vocabulary products and final LayerNorm."""
    outside = [s for s in vocabulary_segments if s["kind"] in VOCABULARY_KINDS or (s["name"] == "ln_f" and c.ln_final)]
    return measure.kind_totals(block_segments + outside, traffic, measure.block_scales(c, 1))


def per_element_rows(blocks: dict, seq_len: int) -> list:
    """(operation, shape, measured bytes per element, fitted bytes per element) at one block of GPT-2 small."""
    coefficients = cost.load_coefficients()["comm_gb"]
    g, r = blocks["SM+LN+G"], blocks["SM+LN+R"]
    c, T = g["config"], seq_len
    shapes = {"softmax": ("softmax", g, c.num_heads * T * T, f"[{c.num_heads},{T},{T}]", "softmax_elements"),
              "GELU (erf)": ("GELU", g, T * c.d_ff, f"[{T},{c.d_ff}]", "gelu_elements"),
              "GELU (tanh)": ("GELU", blocks["SM+LN+G, tanh GELU"], T * c.d_ff, f"[{T},{c.d_ff}]", "gelu_elements"),
              "ReLU": ("ReLU", r, T * c.d_ff, f"[{T},{c.d_ff}]", "relu_elements"),
              "LayerNorm": ("LayerNorm", g, 2 * T * c.d_model, f"2 x [{T},{c.d_model}]", "layernorm_elements")}
    rows = []
    for op, (kind, block, elements, shape, feature) in shapes.items():
        measured = sum(block["traffic"][s["name"]].bytes for s in block["segments"]
                       if s["kind"] == kind and s["site"] != "model")
        rows.append({"op": op, "shape": shape, "measured_bytes_per_element": measured / elements,
                     "fitted_bytes_per_element": coefficients[feature] * 1e9, "measured_mb": measured / 1e6})
    return rows


def published_row(name: str, seq_len: int):
    rows = [row for row in fit.calibration_rows() if row["arch"] == name and row["num_layers"] == 12
            and row["seq_len"] == seq_len]
    return rows[0] if rows else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "pi_measured.json"))
    args = parser.parse_args(argv)
    blocks = {}
    for index, (label, name, overrides) in enumerate(ARCHS):
        c, result, traffic = measured_block(name, overrides, args.seq_len, with_vocabulary=index == 0)
        blocks[label] = {"preset": name, "config": c, "segments": result["segments"], "traffic": traffic,
                        "settings": result["settings"], "output_error": measure.logit_agreement(
                            np.asarray(result["private_output"]), np.asarray(result["plaintext_output"]))}
    vocabulary = blocks[ARCHS[0][0]]
    table = []
    for label, block in blocks.items():
        c, name = block["config"], block["preset"]
        in_blocks = [s for s in block["segments"] if s["site"] != "model"]
        # Program names repeat across architectures (h.0.qkv): each row reads its own block's traffic.
        kinds = whole_model(c, in_blocks, vocabulary["segments"], {**vocabulary["traffic"], **block["traffic"]})
        total_bytes = sum(row["scaled_bytes"] for row in kinds.values())
        total_wall = sum(row["scaled_wall_s"] for row in kinds.values())
        modelled = cost.pi_cost(c, args.seq_len, name=name)
        published = published_row(name, args.seq_len)
        table.append({
            "arch": label, "measured_gb": total_bytes / 1e9, "model_gb": modelled["comm_gb"],
            "published_gb": published and published["comm_gb"],
            "kinds_gb": {kind: row["scaled_bytes"] / 1e9 for kind, row in kinds.items()},
            "wall_s": total_wall, "wan_latency_min": measure.wan_latency_s(
                total_bytes, total_wall, measure.stated_round_trips(c, args.seq_len)) / 60,
            "published_latency_min": published and published["latency_min"],
            "block_output_error": block["output_error"]})
    calibration = per_element_rows(blocks, args.seq_len)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"seq_len": args.seq_len, "settings": vocabulary["settings"], "calibration": calibration,
                   "models": table, "programs": {label: [
                       {**segment, "bytes": block["traffic"][segment["name"]].bytes,
                        "messages": block["traffic"][segment["name"]].messages} for segment in block["segments"]]
                       for label, block in blocks.items()}}, f, indent=1)
    print(markdown(calibration, table))


def markdown(calibration: list, table: list) -> str:
    lines = ["| operation | shape | measured B/element | fitted B/element | measured / fitted |", "|---|---|---|---|---|"]
    lines += [f"| {r['op']} | {r['shape']} | {r['measured_bytes_per_element']:,.0f} | "
              f"{r['fitted_bytes_per_element']:,.0f} | " + (
                  f"{r['measured_bytes_per_element'] / r['fitted_bytes_per_element']:.2f}x |"
                  if r["fitted_bytes_per_element"] else "- |") for r in calibration]
    kinds = sorted({kind for row in table for kind in row["kinds_gb"]}, key=measure.KINDS.index)
    lines += ["", "| arch | measured GB | " + " | ".join(kinds) + " | model GB | published GB | measured / published "
              "| WAN estimate min | published min |", "|---" * (len(kinds) + 7) + "|"]
    for row in table:
        published = row["published_gb"]
        lines.append(f"| {row['arch']} | {row['measured_gb']:.2f} | " + " | ".join(
            f"{row['kinds_gb'].get(kind, 0):.2f}" for kind in kinds) + f" | {row['model_gb']:.2f} | "
            f"{published:.2f} | {row['measured_gb'] / published:.2f}x | {row['wan_latency_min']:.1f} | "
            f"{row['published_latency_min']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
