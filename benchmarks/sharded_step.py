"""Step time of the sharded training step on 1 device and on 8 fake CPU devices with each mesh.

    python benchmarks/sharded_step.py [--steps 10]

Model of the step benchmark (L=4, H=4, d=256, T=128, batch 16, vocabulary 256), EReg(SM+LN+G).
Each mesh runs in its own process (the device count is fixed at JAX start). On a CPU the fake
devices share the same cores, so 8 devices cannot be faster than 1; the figures show that
sharding adds no pathological cost (collective storms, a recompile per step): compare the step
times, and the number of compilations after the first step, which must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MESHES = (("1 device", {"data": 1}, 1), ("data=8", {"data": 8}, 8),
          ("fsdp=4 x tensor=2", {"fsdp": 4, "tensor": 2}, 8),
          ("data=2 x fsdp=2 x tensor=2", {"data": 2, "fsdp": 2, "tensor": 2}, 8))
SIZE = dict(num_layers=4, num_heads=4, d_model=256, d_ff=1024, vocab_size=256, max_len=128)
BATCH = 16


def measure(mesh_sizes: dict, steps: int) -> dict:
    """In this process: compile, warm up, then time `steps` sharded steps."""
    import jax

    from aero_jax import optim, presets, sharding
    from aero_jax.model import AeroLM
    from aero_jax.train_step import create_train_state, jit_train_step

    model = AeroLM(presets.model_config("EReg(SM+LN+G)", **SIZE))
    optimizer = optim.adamw(1e-3)
    mesh = sharding.make_mesh(mesh_sizes)
    init = lambda: create_train_state(model, optimizer, jax.random.key(0))  # noqa: E731
    state_shardings = sharding.tree_shardings(jax.eval_shape(init), mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    state = jax.jit(init, out_shardings=state_shardings)()
    step = jit_train_step(model, optimizer, state_shardings=state_shardings, batch_sharding=batch_sharding,
                          metrics_sharding=sharding.replicated(mesh))
    batches = [sharding.put_global_batch(b, batch_sharding) for b in
               jax.device_get(jax.random.randint(jax.random.key(1), (steps + 2, BATCH, SIZE["max_len"]), 0, 256))]
    start = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    state, metrics = step(state, batches[1])
    jax.block_until_ready(metrics)
    compiled_before = step._cache_size()
    start = time.perf_counter()
    for batch in batches[2:]:
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    return {"devices": jax.device_count(), "step_ms": round(seconds * 1e3, 1), "compile_s": round(compile_s, 2),
            "recompiles_after_first_step": step._cache_size() - compiled_before,
            "tokens_per_s": round(BATCH * SIZE["max_len"] / seconds, 1), "loss": float(metrics["loss"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child), args.steps)))
        return
    for name, mesh, devices in MESHES:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", json.dumps(mesh)],
                             env=env, capture_output=True, text=True, check=True).stdout
        print(json.dumps({"mesh": name, **json.loads(out.splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
