"""Console entry points: aero-train and aero-eval (absl flags, ml_collections config files).

    aero-train --config=configs/default.py --workdir=workdirs/default [--config.train.num_steps=200]
    aero-eval --workdir=workdirs/default
"""

from __future__ import annotations

import json
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from aero_jax import distributed
from aero_jax.config import ConfigError

FLAGS = flags.FLAGS


def _define_train_flags():
    config_flags.DEFINE_config_file("config", None, "A config file in configs/, e.g. configs/default.py[:variant].",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "The run directory (local path or gs://); rerunning resumes it.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs off TPU pods.")
    flags.DEFINE_integer("num_processes", None, "How many processes the run has (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
    flags.mark_flags_as_required(["config", "workdir"])


def _report(summary: dict) -> None:
    if jax.process_index() != 0:
        return
    lines = [f"workdir: {summary['workdir']} (metrics.jsonl, tensorboard/, checkpoints/, eval/, summary.json)"]
    if "validation_perplexity" in summary:
        lines = [f"validation perplexity: {summary['validation_perplexity']:.3f} "
                 f"(loss {summary['validation_loss']:.4f}) after {summary['step']} steps of {summary['architecture']}",
                 f"same validation data, unigram perplexity: {summary['unigram_perplexity']:.3f}",
                 f"same validation data, bigram perplexity:  {summary['bigram_perplexity']:.3f}"] + lines
    print("\n".join(lines), flush=True)


def _quiet_libraries() -> None:
    """Keep the console for the run's own lines: orbax and TFDS log every save and read at INFO."""
    logging.set_verbosity(logging.ERROR)


def _train_main(argv):
    del argv
    _quiet_libraries()
    from aero_jax.trainer import train

    try:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        summary = train(FLAGS.config, FLAGS.workdir)
    except ConfigError as error:
        sys.exit(f"aero-train: {error}")
    _report(summary)


def train():
    _define_train_flags()
    app.run(_train_main)


def _eval_main(argv):
    del argv
    _quiet_libraries()
    from aero_jax.evaluate import evaluate_workdir

    try:
        result = evaluate_workdir(FLAGS.workdir)
    except ConfigError as error:
        sys.exit(f"aero-eval: {error}")
    print(json.dumps(result, indent=2), flush=True)


def evaluate():
    flags.DEFINE_string("workdir", None, "A run directory written by aero-train.")
    flags.mark_flags_as_required(["workdir"])
    app.run(_eval_main)
