"""Tokens/s of aero-train's loop on the default config next to the bare jitted step at the same size.

    python benchmarks/train_loop_overhead.py [--steps 200]

The loop figure covers everything between steps: data gathering, metric fetches and logging
(JSONL, TensorBoard), and checkpoint saves; compilation and evaluation are left out. Prints two
JSON lines and a summary with the loop's overhead as a share of its time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_throughput import measure_config  # noqa: E402

from aero_jax.run_config import model_config_from  # noqa: E402
from aero_jax.run_log import read_metrics  # noqa: E402
from aero_jax.trainer import Trainer  # noqa: E402


def default_config():
    spec = importlib.util.spec_from_file_location("default_config", ROOT / "configs" / "default.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def loop_tokens_per_s(config, steps: int) -> dict:
    """Train `steps` steps in a fresh workdir; tokens/s over every log window after the first."""
    config.train.num_steps = steps
    config.train.eval_every = 10 * steps  # evaluation is work, not loop overhead
    with tempfile.TemporaryDirectory() as workdir:
        Trainer(config, workdir).run()
        windows = [r for r in read_metrics(workdir) if r["kind"] == "train"][1:]
    log_every = config.train.log_every
    tokens = sum(log_every * config.train.batch_size * config.model.max_len for _ in windows)
    seconds = sum(log_every * r["step_time_s"] for r in windows)
    return {"tokens_per_s": round(tokens / seconds, 1), "windows": len(windows)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    config = default_config()
    config.train.checkpoint_every = max(1, args.steps // 4)
    bare = measure_config(model_config_from(config.model), config.train.batch_size, steps=50, warmup=3)
    loop = loop_tokens_per_s(config, args.steps)
    print(json.dumps({"what": "bare jitted step", "preset": config.model.preset, **bare}))
    print(json.dumps({"what": "aero-train loop", "preset": config.model.preset, "steps": args.steps,
                      "checkpoint_every": config.train.checkpoint_every, "log_every": config.train.log_every,
                      **loop}))
    overhead = 1 - loop["tokens_per_s"] / bare["tokens_per_s"]
    print(json.dumps({"summary": "loop overhead", "overhead_share": round(overhead, 4)}))


if __name__ == "__main__":
    main()
