"""Runs the Trainer on the given mesh(es) and prints JSON results; driven by tests/test_sharding.py.

    python tests/sharded_run.py SPEC.json

SPEC: {"corpus": {...}, "runs": [{"mesh": {...}, "workdir": ..., "crash_at": null | step}],
"distributed": null | {"coordinator_address", "num_processes", "process_id"},
"bucket": null | {"root": folder standing for gs://test-bucket, "mirror": this process's mirror folder}}.
With a bucket, the data must already be there: a process that tokenizes fails. Set XLA_FLAGS before
starting it to get fake CPU devices.
"""

import contextlib
import json
import sys

import jax
from conftest import mock_bucket, run_until_killed

from aero_jax import distributed
from aero_jax.data import cache, pipeline
from aero_jax.run_config import base_config, model_section
from aero_jax.run_log import read_metrics
from aero_jax.trainer import Trainer

PARAMS_TO_REPORT = ("wte/embedding", "block_0/attn/query/kernel", "block_0/attn/out/kernel",
                    "block_0/ffn/fc_in/kernel", "block_0/ffn/fc_out/kernel", "entropy_thresholds")


def config_for(corpus, mesh):
    c = base_config()
    c.model = model_section("EReg(SM+LN+G)", size="tiny", num_heads=4, vocab_size=257, max_len=16)
    c.data.update(corpus)
    c.train.update(num_steps=8, batch_size=16, grad_accum_steps=2, log_every=1, eval_every=4, eval_batch_size=8,
                   eval_batches=1, checkpoint_every=4)
    c.mesh.update(mesh)
    return c


def specs(trainer):
    out = {}
    for name in PARAMS_TO_REPORT:
        leaf = trainer.state.params
        for key in name.split("/"):
            leaf = leaf[key]
        out[name] = [list(a) if isinstance(a, tuple) else a for a in leaf.sharding.spec]
    mu = trainer.state.opt_state[1][0].mu["block_0"]["attn"]["query"]["kernel"]
    out["adam_mu/block_0/attn/query/kernel"] = [list(a) if isinstance(a, tuple) else a for a in mu.sharding.spec]
    return out


def run(corpus, spec):
    trainer = Trainer(config_for(corpus, spec["mesh"]), spec["workdir"])
    if spec.get("crash_at") is None:
        trainer.run()
    else:
        run_until_killed(trainer, at_step=spec["crash_at"])
    losses = {}
    if jax.process_index() == 0:
        losses = {r["step"]: r["loss"] for r in read_metrics(spec["workdir"]) if r["kind"] == "train"}
    return {"mesh": dict(trainer.mesh.shape), "resumed_from": trainer.resumed_from, "losses": losses,
            "specs": specs(trainer)}


@contextlib.contextmanager
def _bucket(bucket):
    """Read the data through the bucket cache; tokenizing anything is an error."""
    if not bucket:
        yield
        return
    cache.MIRROR_ROOT = bucket["mirror"]

    def tokenized(*args, **kwargs):
        raise AssertionError("a host tokenized the corpus instead of copying it from the bucket")

    pipeline.documents = tokenized
    with mock_bucket(bucket["root"]):
        yield


def main():
    spec = json.load(open(sys.argv[1]))
    if spec.get("distributed"):
        distributed.initialize(**spec["distributed"])
    with _bucket(spec.get("bucket")):
        results = [run(spec["corpus"], r) for r in spec["runs"]]
    if jax.process_index() == 0:
        print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
