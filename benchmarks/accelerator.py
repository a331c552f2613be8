"""The GPT-2-small training step on whatever accelerator JAX sees, then a float16 probe of the failure modes.

    python benchmarks/accelerator.py --out accelerator.json [--minutes 8] [--probe-data rows.npy]
    python benchmarks/accelerator.py --smoke            # CPU, tiny sizes: the script's own test
    python benchmarks/accelerator.py --write-probe-data rows.npy   # where the project is installed: the rows

Part 1, the step (aero_jax.train_step.jit_train_step, as aero-train runs it): for SM+LN+G and
EReg(SM(t)+ScFuFFN) at GPT-2 small (L=12, d=768, V=50257), T = 512, 256, 128, in bfloat16 and float16, it
prints tokens/s, step time, compile time, XLA's memory for the compiled step, the device's peak memory, the
largest batch that fits (from XLA's memory analysis of the compiled step: the state's bytes plus a per-sequence
share, against the device's memory limit) and MFU. MFU = tokens/s x F / (peak x chips), where F =
aero_jax.flops.train_flops_per_token = 3 x (the forward's matrix FLOPs, 2 per multiply-add: projections,
FFN, LM head, and the two T x T products at 4 T^2 d per layer, the masked half included) / T, and the peak is
the chip's dense bf16 rate (aero_jax.flops.PEAK_FLOPS: v4 275, v5e 197, v5p 459, H100/H200 989 TFLOP/s).
For EReg it also times the step with the penalty and the entropy off: the penalty's share is 1 - t_off / t_on.
Each configuration is one compile and a few timed steps, taken in order of importance (T=512 first) until
--step-minutes is spent; what was left is listed.

Part 2, the probe, in --minutes: SM and SM+LN+G at the deep study's size (L=12, H=4, d=128, bytes, T=128,
batch 32) in float16 at the papers' learning rate (1e-3, 5% warmup, linear decay over the steps that fit), as
many steps as fit, recording per layer the non-finite attention probabilities, the first step each layer had
one, the loss scale, the skipped updates and where (if anywhere) the run diverged: claims 2 and 3b of the study.

It needs jax, flax, optax and numpy, and the project on PYTHONPATH (aero_jax's model, step, optimizer and FLOPs
import nothing else): a stock JAX GPU image has them, so nothing travels as wheels. The probe's rows come from
--probe-data (uint16 [N, 128], made with --write-probe-data where the project's environment is); without it
the probe trains on random bytes, which says little, and says so.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import runpy
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from aero_jax import flops, optim, presets
from aero_jax.model import AeroLM
from aero_jax.train_step import create_train_state, jit_train_step

STEP_PRESETS = ("SM+LN+G", "EReg(SM(t)+ScFuFFN)")
SEQ_LENS = (512, 256, 128)
DTYPES = ("bfloat16", "float16")
TOKENS_PER_STEP = 65_536  # 128 sequences of 512, 512 of 128: enough rows to fill a large chip
PROBE_PRESETS = ("SM", "SM+LN+G")
PROBE_SIZE = dict(num_layers=12, num_heads=4, d_model=128, d_ff=512, vocab_size=257, max_len=128)
PROBE_BATCH, PROBE_LR = 32, 1e-3
SMOKE_SIZE = dict(num_layers=2, num_heads=2, d_model=32, d_ff=128, vocab_size=257)
MEMORY_HEADROOM = 0.9  # the share of the device's limit a predicted batch may fill


def device_summary() -> dict:
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return {"backend": jax.default_backend(), "device_kind": device.device_kind, "devices": jax.device_count(),
            "memory_limit_bytes": stats.get("bytes_limit"), "peak_flops": flops.peak_flops(device.device_kind),
            "jax": jax.__version__}


def random_tokens(key: int, batch: int, seq_len: int, vocab: int) -> jax.Array:
    return jax.random.randint(jax.random.key(key), (batch, seq_len), 0, vocab, dtype=jnp.int32)


def tree_bytes(tree) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(tree))


def measure_step(config, batch: int, steps: int) -> dict:
    """Compile the training step of `config` at `batch`, run it, and report its speed and memory."""
    model, optimizer = AeroLM(config), optim.adamw(1e-4)
    state = create_train_state(model, optimizer, jax.random.key(0))  # eager: jitted, XLA GPU took 3 minutes on it
    tokens = random_tokens(1, batch, config.max_len, config.vocab_size)
    started = time.perf_counter()
    compiled = jit_train_step(model, optimizer).lower(state, tokens).compile()
    compile_s = time.perf_counter() - started
    memory = compiled.memory_analysis()
    state, metrics = compiled(state, tokens)  # one step to warm up
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, tokens)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - started) / steps
    tokens_per_s = batch * config.max_len / step_s
    result = {"batch": batch, "seq_len": config.max_len, "dtype": config.dtype, "step_ms": round(step_s * 1e3, 3),
              "tokens_per_s": round(tokens_per_s), "compile_s": round(compile_s, 2),
              "model_tflop_per_step": round(flops.train_flops_per_token(config) * batch * config.max_len / 1e12, 3),
              "loss": float(metrics["loss"])}
    result["mfu"] = flops.mfu(tokens_per_s, config, jax.devices()[0].device_kind, 1)
    if memory is not None:
        state_bytes = tree_bytes(state)
        step_bytes = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes \
            - memory.alias_size_in_bytes
        limit = device_summary()["memory_limit_bytes"]
        result.update(xla_step_bytes=int(step_bytes), state_bytes=state_bytes)
        if limit:
            per_sequence = max(step_bytes - state_bytes, 1) / batch
            result["largest_batch_predicted"] = int((limit * MEMORY_HEADROOM - state_bytes) // per_sequence)
    stats = jax.devices()[0].memory_stats() or {}
    result["peak_device_bytes"] = stats.get("peak_bytes_in_use")
    return result


def step_grid(smoke: bool, seq_lens, dtypes, minutes: float, steps: int) -> list:
    """Every (preset, T, dtype) of part 1 that fits in `minutes`, T=512 first; the penalty's share for EReg."""
    deadline = time.perf_counter() + 60 * minutes
    size = dict(SMOKE_SIZE) if smoke else {}
    rows = []
    for seq_len in seq_lens:
        for dtype in dtypes:
            for name in STEP_PRESETS:
                variants = [("on", {})]
                if presets.model_config(name, size="gpt2-small").entropy_reg:
                    variants.append(("off", {"entropy_reg": False, "sow_entropy": False}))
                for penalty, off in variants:
                    label = {"preset": name, "penalty": penalty, "seq_len": seq_len, "dtype": dtype}
                    if time.perf_counter() > deadline:
                        rows.append({**label, "skipped": "past --step-minutes"})
                        continue
                    config = presets.model_config(name, size="gpt2-small", max_len=seq_len, dtype=dtype,
                                                  **size, **off)
                    batch = 4 if smoke else TOKENS_PER_STEP // seq_len
                    try:
                        row = {**label, **measure_step(config, batch, steps)}
                    except Exception as error:  # an out-of-memory or a failed compile is a result, not the end
                        row = {**label, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    for on in rows:
        off = next((r for r in rows if r.get("penalty") == "off" and r["seq_len"] == on["seq_len"]
                    and r["dtype"] == on["dtype"] and r["preset"] == on["preset"]), None)
        if on.get("penalty") == "on" and off is not None and "step_ms" in on and "step_ms" in off:
            on["penalty_share_of_step"] = round(1 - off["step_ms"] / on["step_ms"], 4)
    return rows


def probe(name: str, rows_NxT: np.ndarray, seconds: float, smoke: bool) -> dict:
    """Train one preset in float16 for `seconds` (the schedule fitted to the steps that fit) and record the failure
    modes: non-finite attention per layer, skipped updates, the loss scale, divergence, entropy per layer."""
    size = dict(PROBE_SIZE, **SMOKE_SIZE) if smoke else PROBE_SIZE
    config = presets.model_config(name, size="tiny", dtype="float16", **size)
    rows_NxT = rows_NxT[:, :config.max_len]
    model = AeroLM(config)

    rng = np.random.default_rng(0)
    batch_at = lambda: jnp.asarray(rows_NxT[rng.integers(0, len(rows_NxT), PROBE_BATCH)], jnp.int32)  # noqa: E731

    def compiled_step(num_steps: int):
        """(fresh state, the step compiled ahead of time) with the schedule fitted to `num_steps`."""
        schedule = optim.learning_rate_schedule(PROBE_LR, num_steps, warmup_fraction=0.05, decay="linear")
        optimizer = optim.adamw(schedule)
        state = create_train_state(model, optimizer, jax.random.key(0))
        return state, jit_train_step(model, optimizer, schedule=schedule).lower(state, batch_at()).compile()

    state, step = compiled_step(1000)  # timing only: the same program as the real one
    for _ in range(2):
        state, metrics = step(state, batch_at())
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(5):
        state, metrics = step(state, batch_at())
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - started) / 5
    planned = max(int(seconds * 0.85 / step_s), 10)

    state, step = compiled_step(planned)
    first_nonfinite = [None] * config.num_layers
    nonfinite_total = np.zeros(config.num_layers, np.int64)
    diverged, history, deadline = None, [], time.perf_counter() + seconds
    log_every = max(planned // 20, 1)
    done = 0
    while done < planned and time.perf_counter() < deadline:
        state, metrics = step(state, batch_at())
        done += 1
        host = jax.device_get(metrics)
        nonfinite = np.asarray(host["nonfinite_attention"])
        nonfinite_total += nonfinite
        for layer in np.flatnonzero(nonfinite):
            first_nonfinite[layer] = first_nonfinite[layer] or done
        skipped = bool(host["skipped_updates"])
        if (not skipped and not np.isfinite(host["loss"])) or float(host["loss_scale"]) == 0:
            diverged = done
        if done % log_every == 0 or diverged:
            history.append({"step": done, "loss": float(host["loss"]), "loss_scale": float(host["loss_scale"]),
                            "layer_entropy": np.asarray(host["head_entropy"]).mean(axis=-1).round(3).tolist()})
        if diverged:
            break
    return {"preset": name, "dtype": "float16", "peak_lr": PROBE_LR, "batch": PROBE_BATCH, **size,
            "steps_planned": planned, "steps_done": done, "step_ms": round(step_s * 1e3, 3),
            "skipped_updates": int(state.loss_scale.skipped), "final_loss_scale": float(state.loss_scale.scale),
            "diverged_at_step": diverged, "nonfinite_attention_per_layer": nonfinite_total.tolist(),
            "first_nonfinite_step_per_layer": first_nonfinite, "history": history}


def write_probe_data(path: str, rows: int) -> None:
    """Save `rows` training rows of the embedded dataset (configs/default.py: bytes, T=128) as uint16 [N, 128]."""
    # The data pipeline (TFDS, ml_collections) is the project's environment's only: imported here, not above.
    from aero_jax.run_config import model_config_from
    from aero_jax.trainer import checked_tokenizer, load_data

    config = runpy.run_path(str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"))["get_config"]()
    model_config = model_config_from(config.model)
    train_rows, _ = load_data(config, checked_tokenizer(config, model_config), model_config.max_len)
    chosen = np.sort(np.random.default_rng(0).choice(len(train_rows), min(rows, len(train_rows)), replace=False))
    np.save(path, np.asarray(train_rows[chosen], np.uint16))
    print(f"wrote {len(chosen):,} rows of {model_config.max_len} tokens to {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any backend (the script's test)")
    parser.add_argument("--out", default="", help="write every figure to this JSON file")
    parser.add_argument("--minutes", type=float, default=8.0, help="the float16 probe's budget (both presets)")
    parser.add_argument("--step-minutes", type=float, default=6.0, help="part 1's budget")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--seq-lens", default=",".join(map(str, SEQ_LENS)))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--probe-data", default="", help="uint16 [N, 128] token rows for the probe (.npy)")
    parser.add_argument("--write-probe-data", default="", help="make --probe-data's file from the embedded dataset")
    parser.add_argument("--probe-rows", type=int, default=60_000)
    args = parser.parse_args(argv)
    if args.write_probe_data:
        write_probe_data(args.write_probe_data, args.probe_rows)
        return 0
    report = {"device": device_summary()}
    print(json.dumps(report["device"]), flush=True)
    seq_lens = (16,) if args.smoke else tuple(int(t) for t in args.seq_lens.split(","))
    report["steps"] = step_grid(args.smoke, seq_lens, args.dtypes.split(","), args.step_minutes, args.steps)
    if args.probe_data:
        rows, source = np.load(args.probe_data), args.probe_data
    else:
        rows = np.random.default_rng(0).integers(0, 256, (4096, PROBE_SIZE["max_len"]), dtype=np.uint16)
        source = "random bytes (no --probe-data): the failure modes of real text are not tested"
    report["probe"] = {"data": source, "runs": []}
    for name in PROBE_PRESETS if args.minutes > 0 else ():
        result = probe(name, rows, 60 * args.minutes / len(PROBE_PRESETS), args.smoke)
        report["probe"]["runs"].append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "history"}), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
