"""Training a study's runs one after another, resumably: a finished or diverged run is never trained again."""

from __future__ import annotations

import json
import math
import os
from typing import Dict, Optional, Tuple

from etils import epath

from aero_jax import trainer
from aero_jax.run_config import architecture_label
from aero_jax.study.spec import Study, run_config, workdir_of
from aero_jax.workdir import write_text_atomically

SUMMARY_FILE = "summary.json"
DIVERGED_FILE = "diverged.json"  # in a run's workdir: the run ended non-finite; not retrained


def finished_summary(workdir: str, num_steps: int) -> Optional[dict]:
    """The run's summary if it trained to `num_steps` or diverged, else None."""
    for name in (DIVERGED_FILE, SUMMARY_FILE):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            with open(path) as f:
                summary = json.load(f)
            if name == DIVERGED_FILE or summary.get("step") == num_steps:
                return summary
    return None


def train_or_diverge(config, workdir: str) -> dict:
    """The run's summary; a run that diverges (the papers' SM does) is recorded, not fatal to the study."""
    try:
        return trainer.train(config, workdir)
    except trainer.Divergence as error:
        summary = {"diverged": str(error), "step": error.step, "architecture": architecture_label(config.model),
                   "validation_perplexity": math.inf}
        write_text_atomically(epath.Path(workdir) / DIVERGED_FILE, json.dumps(summary))
        print(f"    diverged at step {error.step}: recorded in {workdir}/{DIVERGED_FILE}", flush=True)
        return summary


def run_all(study: Study, root: str) -> Dict[Tuple[str, int], dict]:
    """Train every run and seed not yet finished, first seeds first; {(run, seed): summary}.

    Seed-major order: a study stopped part-way has every architecture once before any second seed.
    """
    jobs = [(run, seed) for seed in sorted({s for run in study.runs for s in run.seeds})
            for run in study.runs if seed in run.seeds]
    summaries = {}
    for index, (run, seed) in enumerate(jobs, start=1):
        config = run_config(study, run, seed)
        workdir = workdir_of(root, run, seed)
        summary = finished_summary(workdir, config.train.num_steps)
        state = "finished" if summary else "training"
        print(f"[{index}/{len(jobs)}] {run.name} seed {seed} ({run.preset}): {state} in {workdir}", flush=True)
        summaries[(run.name, seed)] = summary or train_or_diverge(config, workdir)
        if summaries[(run.name, seed)].get("stopped_by_signal"):  # it saved its checkpoint: end as Ctrl-C does
            raise KeyboardInterrupt
    return summaries
