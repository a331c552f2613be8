"""aero-study: a declarative list of runs, trained one after another, reported on one page.

    aero-study --spec studies/paper_claims.py[:variant] --out docs/results [--workdirs DIR] [--dry-run]

A spec file's `get_study(variant)` returns a `Study` (spec.py): a config file, the size every run shares, the
runs (preset, seeds, steps, config overrides) and the claims to test (claims.py). Each run is an ordinary workdir
(`DIR/<run slug>-seed<k>`, default DIR `workdirs/<study>`), so rerunning the command resumes the run that was
interrupted and skips the finished ones (running.py). Then the page OUT.md is written from the runs' own files,
each claim with its verdict and its figures in OUT (page.py): no number on it is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from etils import epath

from aero_jax import figures, presets
from aero_jax.config import ConfigError
from aero_jax.errors import argparse_main, honour_ctrl_c
from aero_jax.run_config import SIZE_FIELDS
from aero_jax.study.claims import (VERDICTS, Claim, GapClaim, InstabilityClaim, OrderClaim, ShareClaim,
                                   SubstituteClaim, TemperatureClaim, TrendClaim)
from aero_jax.study.page import write_page
from aero_jax.study.running import run_all
from aero_jax.study.spec import Condition, RunSpec, Study, check_study, load_study, run_config, workdir_of
from aero_jax.workdir import check_output_folder, write_text_atomically

__all__ = ["VERDICTS", "Claim", "Condition", "GapClaim", "InstabilityClaim", "OrderClaim", "RunSpec", "ShareClaim",
           "Study", "SubstituteClaim", "TemperatureClaim", "TrendClaim", "check_study", "load_study", "main",
           "run_all", "run_config"]

STUDY_FILE = "study.json"  # in OUT: which study the folder holds


def check_out_folder(out: str, study: Study) -> None:
    """Refuse, creating nothing, an OUT the study may not write: unwritable, another study's, or with other files."""
    check_output_folder(out, flag="--out")
    marker = os.path.join(out, STUDY_FILE)
    if os.path.exists(marker):
        with open(marker) as f:
            held = json.load(f).get("study")
        if held != study.name:
            raise ConfigError(f"--out={out} holds the study {held!r}, not {study.name!r}; accepted: an empty "
                              f"folder or one of this study")
    elif os.path.isdir(out) and [entry for entry in os.listdir(out) if not entry.startswith(".")]:
        raise ConfigError(f"--out={out} holds files of no study; accepted: an empty folder or one of this study")


def claim_out_folder(out: str, study: Study) -> None:
    """OUT holds this study's outputs only: a folder of another study is refused, never overwritten."""
    check_out_folder(out, study)
    os.makedirs(out, exist_ok=True)
    marker = epath.Path(out) / STUDY_FILE
    if not marker.exists():
        write_text_atomically(marker, json.dumps({"study": study.name}))


def override_flags(study: Study, run: RunSpec, seed: int) -> str:
    """The --config.* flags that make `aero-train` train this run."""
    flags = [f"--config.model.preset={presets.slug(presets.resolve(run.preset))}", f"--config.seed={seed}"]
    flags += [f"--config.model.{f}={study.size[f]}" for f in SIZE_FIELDS]
    train = {**dict(study.train), **({"num_steps": run.steps} if run.steps else {})}
    flags += [f"--config.train.{k}={v}" for k, v in train.items()]
    flags += [f"--config.{path}={value}" for path, value in run.overrides.items()]
    return " ".join(flags)


def _run(args) -> None:
    study = load_study(args.spec)
    root = args.workdirs or os.path.join("workdirs", study.name)
    check_output_folder(root, flag="--workdirs")  # before anything is written; the dry run refuses the same
    if args.dry_run:
        check_out_folder(args.out, study)
        for run in study.runs:
            for seed in run.seeds:
                config = run_config(study, run, seed)
                workdir = workdir_of(root, run, seed)
                print(json.dumps({"run": run.name, "seed": seed, "preset": config.model.preset,
                                  "num_steps": config.train.num_steps, "batch_size": config.train.batch_size,
                                  "dataset": config.data.dataset, "workdir": workdir,
                                  "command": f"aero-train --config={study.config} --workdir={workdir} "
                                             f"{override_flags(study, run, seed)}"}))
        return
    claim_out_folder(args.out, study)
    summaries = run_all(study, root)
    command = " ".join(["aero-study", *sys.argv[1:]]) if sys.argv[0].endswith("aero-study") else \
        f"aero-study --spec {args.spec} --out {args.out}"
    print(f"written: {write_page(study, summaries, args.out, command, root)}")


def main(argv=None):
    figures.files_only()
    honour_ctrl_c()  # as the trainer's loop does: otherwise a SIGINT between runs (setting up the next) is lost
    parser = argparse.ArgumentParser(prog="aero-study", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="a study file, e.g. studies/paper_claims.py[:variant]")
    parser.add_argument("--out", default="docs/results", help="figures and the report; the page is OUT.md")
    parser.add_argument("--workdirs", default="", help="where the runs' workdirs live (default workdirs/<study>)")
    parser.add_argument("--dry-run", action="store_true", help="print each run's config and command, train nothing")
    argparse_main("aero-study", parser, _run, argv,
                  interrupted=lambda: "the runs trained so far are kept; rerun the same command to resume")
