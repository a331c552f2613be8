"""aero-study: a declarative list of runs, trained one after another, reported on one page.

    aero-study --spec studies/paper_claims.py[:variant] --out docs/results [--workdirs DIR] [--dry-run]

A spec file's `get_study(variant)` returns a `Study`: a config file, the size every run shares,
the runs (preset, seeds, steps, config overrides) and the perplexity-order claims to test. Each
run is an ordinary workdir (`DIR/<run slug>-seed<k>`, default DIR `workdirs/<study>`), so rerunning
the command resumes the run that was interrupted and skips the finished ones. Then the page OUT.md
is written from the runs' own files, each claim with its verdict and its figures (drawn with
aero-report's figure functions, in OUT): no number on it is typed by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import math
import os
import platform
import signal
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from etils import epath

from aero_jax import presets
from aero_jax.config import ConfigError
from aero_jax.errors import argparse_main
from aero_jax.run_config import SIZE_FIELDS, model_config_from, validate, with_preset
from aero_jax.run_log import metric_series
from aero_jax.workdir import check_output_folder, write_text_atomically

STUDY_FILE = "study.json"  # in OUT: which study the folder holds
SUMMARY_FILE = "summary.json"
DIVERGED_FILE = "diverged.json"  # in a run's workdir: the run ended non-finite; not retrained
PAPER_SIZE = dict(num_layers=12, num_heads=12, d_model=768, d_ff=3072, vocab_size=50257, max_len=128)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One architecture, trained once per seed; `overrides` are dotted config paths ("model.ereg_gamma")."""

    name: str
    preset: str
    seeds: Tuple[int, ...] = (0,)
    steps: int = 0  # 0: the config file's train.num_steps
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OrderClaim:
    """A published perplexity order: `order` lists run names from the lowest perplexity to the highest."""

    title: str
    order: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class GapClaim:
    """A published "costs little perplexity": each variant within `max_increase` (relative) of the reference."""

    title: str
    reference: str
    variants: Tuple[str, ...]
    max_increase: float = 0.05


ENTROPY_REGIONS = ("early_top", "deep_bottom", "all_top")


@dataclasses.dataclass(frozen=True)
class ShareClaim:
    """A published entropy pattern: the `larger` runs have more of their heads in `region` than the `smaller`.

    `early_top`: heads of the first half of the layers with entropy in [3/4, 1] log T (entropic
    overload); `deep_bottom`: heads of the other layers in [0, 1/4) log T (entropy collapse);
    `all_top`: every head in [3/4, 1] log T. The newest evaluation of each run is read (a run that
    diverged has its last one).
    """

    title: str
    region: str
    larger: Tuple[str, ...]
    smaller: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TrendClaim:
    """A published trend: the share of heads in `region` grows along `runs` (e.g. a sweep of gamma)."""

    title: str
    region: str
    runs: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class InstabilityClaim:
    """A published instability: `run` diverges, shows non-finite attention probabilities, or ends at `factor`
    times the perplexity of `reference` or worse."""

    title: str
    run: str
    reference: str
    factor: float = 1.1


@dataclasses.dataclass(frozen=True)
class SubstituteClaim:
    """The LayerNorm substitute costs little perplexity: `run` (a LayerNorm model) after calibration, folding and
    `finetune_steps` steps of fine-tuning is within `max_increase` of its perplexity with LayerNorm."""

    title: str
    run: str
    finetune_steps: int = 200
    max_increase: float = 0.05


@dataclasses.dataclass(frozen=True)
class TemperatureClaim:
    """The learnable temperatures do what the papers describe (t > 1 spreads attention, t < 1 sharpens it):
    across the heads of `run`, the mean log t and the head's attention entropy rise together (Spearman's
    rank correlation, positive at p < 0.05 in every seed). The page plots t over training from every kept
    checkpoint (the study should keep them all: train.keep_checkpoints)."""

    title: str
    run: str


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    config: str  # a config file as --config names it, e.g. "configs/default.py"
    size: Mapping[str, int]  # every SIZE_FIELDS value, shared by all runs
    runs: Tuple[RunSpec, ...]
    claims: Tuple[Union[OrderClaim, GapClaim, ShareClaim, TrendClaim, InstabilityClaim, SubstituteClaim,
                       TemperatureClaim], ...] = ()
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # train.* for every run
    differences: str = ""  # what differs from the papers and why, for the page
    headline: Tuple[str, ...] = ()  # (baseline run, run): the page opens with the run's saving at its perplexity


# -- the spec -------------------------------------------------------------------------------------

def load_study(spec: str) -> Study:
    """The Study of a spec file ('path.py[:variant]'), checked: known presets, distinct names, full size, and its
    config file loads."""
    study = _call_file(spec, "get_study", f"--spec={spec}",
                       "a study file defining get_study(variant), such as studies/paper_claims.py[:variant]")
    check_study(study)
    _call_file(study.config, "get_config", f"--spec={spec}: its config {study.config}",
               "a config file defining get_config(variant), such as configs/default.py[:variant], relative to the "
               "current folder")
    return study


def _call_file(path: str, function: str, what: str, accepted: str):
    """`function` of a file named as --config names it; a file that cannot be read or parsed, that lacks
    `function`, or whose `function` refuses its variant, is bad input, refused in one line naming `what`."""
    from aero_jax.cli import load_config_file  # the same loader as --config

    try:
        return load_config_file(path, function=function)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:  # e.g. an unknown variant, or no variant parameter
        raise ConfigError(f"{what}: {type(error).__name__}: {error}; accepted: {accepted}") from error
    except (OSError, SyntaxError, AttributeError) as error:
        if isinstance(error, AttributeError) and error.name != function:
            raise  # raised inside `function`: the file's own failure
        reason = (f"syntax error at line {error.lineno}: {error.msg}" if isinstance(error, SyntaxError) else
                  f"no {function}" if isinstance(error, AttributeError) else error.strerror or type(error).__name__)
        raise ConfigError(f"{what} cannot be loaded ({reason}); accepted: {accepted}") from error


def check_study(study: Study) -> None:
    names = [run.name for run in study.runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"study {study.name} names runs {', '.join(repeated)} more than once; accepted: distinct "
                          f"run names")
    for run in study.runs:
        presets.resolve(run.preset)
        if not run.seeds or run.steps < 0:
            raise ConfigError(f"run {run.name}: seeds={run.seeds}, steps={run.steps} are invalid; accepted: at "
                              f"least one seed, steps >= 0")
    missing = [f for f in SIZE_FIELDS if f not in study.size]
    if missing:
        raise ConfigError(f"study {study.name} size lacks {', '.join(missing)}; accepted: every one of "
                          f"{', '.join(SIZE_FIELDS)}")
    if study.headline and (len(study.headline) != 2 or not set(study.headline) <= set(names)):
        raise ConfigError(f"study {study.name}: headline={study.headline} is invalid; accepted: (baseline run, run) "
                          f"among {', '.join(names)}")
    for claim in study.claims:
        named = claim_runs(claim)
        if isinstance(claim, (ShareClaim, TrendClaim)) and claim.region not in ENTROPY_REGIONS:
            raise ConfigError(f"claim {claim.title!r}: region={claim.region!r} is invalid; accepted: "
                              f"{', '.join(ENTROPY_REGIONS)}")
        unknown = [n for n in named if n not in names]
        if unknown:
            raise ConfigError(f"claim {claim.title!r} names runs {', '.join(unknown)}; accepted: {', '.join(names)}")
        if isinstance(claim, TemperatureClaim):
            preset = presets.resolve(next(r.preset for r in study.runs if r.name == claim.run))
            if not presets.model_config(preset, size="tiny", **study.size).learnable_temperature:
                raise ConfigError(f"claim {claim.title!r}: run {claim.run} ({preset}) has no learnable temperature; "
                                  f"accepted: a run of an SM(t) preset")


def claim_runs(claim) -> Tuple[str, ...]:
    """The run names a claim reads."""
    if isinstance(claim, OrderClaim):
        return claim.order
    if isinstance(claim, GapClaim):
        return (claim.reference, *claim.variants)
    if isinstance(claim, ShareClaim):
        return (*claim.larger, *claim.smaller)
    if isinstance(claim, TrendClaim):
        return claim.runs
    if isinstance(claim, InstabilityClaim):
        return (claim.run, claim.reference)
    return (claim.run,)


def run_config(study: Study, run: RunSpec, seed: int):
    """The run config of one run and seed: the study's config file, size and train section, then the overrides."""
    from aero_jax.cli import load_config_file

    config = load_config_file(study.config)
    # The preset at the study's size, keeping what the config file chose beyond its own preset (e.g. dtype).
    config.model = with_preset({**dict(config.model), **study.size}, run.preset, file_section=config.model)
    config.seed = seed
    config.train.update(dict(study.train))
    if run.steps:
        config.train.num_steps = run.steps
    for path, value in run.overrides.items():
        section, _, field = path.partition(".")
        if section not in config or field not in config[section]:
            raise ConfigError(f"run {run.name}: override {path} names no config field; accepted: SECTION.FIELD of "
                              f"{study.config}")
        config[section][field] = value
    validate(config)
    return config


def workdir_of(root: str, run: RunSpec, seed: int) -> str:
    """The run's workdir, named by the run's slug: 'EReg gamma=0.1' -> ROOT/ereg_gamma_0_1-seed0."""
    return os.path.join(root, f"{presets.slug(run.name)}-seed{seed}")


# -- running ----------------------------------------------------------------------------------------

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


def _train_or_diverge(config, workdir: str) -> dict:
    """The run's summary; a run that diverges (the papers' SM does) is recorded, not fatal to the study."""
    from aero_jax.run_config import architecture_label
    from aero_jax.trainer import Divergence, train

    try:
        return train(config, workdir)
    except Divergence as error:
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
        summaries[(run.name, seed)] = summary or _train_or_diverge(config, workdir)
        if summaries[(run.name, seed)].get("stopped_by_signal"):  # it saved its checkpoint: end as Ctrl-C does
            raise KeyboardInterrupt
    return summaries


def claim_perplexity(study: Study, names: Sequence[str],
                     summaries: Mapping[Tuple[str, int], dict]) -> List[Tuple[str, float, float]]:
    """[(run, mean perplexity, spread (max - min over seeds))] in the given order; a diverged seed makes it inf."""
    out = []
    for name in names:
        values = [s["validation_perplexity"] for (run, _), s in summaries.items() if run == name]
        if not all(math.isfinite(v) for v in values):
            out.append((name, math.inf, 0.0))
        else:
            out.append((name, float(np.mean(values)), float(np.max(values) - np.min(values))))
    return out


def verdict(measured: Sequence[Tuple[str, float, float]]) -> str:
    """reproduced: every step of the order holds by more than the seed spread; not reproduced: one is
    reversed by more than it; inconclusive otherwise."""
    steps = list(zip(measured[:-1], measured[1:]))
    margin = [b[1] - a[1] - max(a[2], b[2]) for a, b in steps]
    reversed_beyond_noise = [a[1] - b[1] - max(a[2], b[2]) for a, b in steps]
    if all(m > 0 for m in margin):
        return "reproduced"
    if any(r > 0 for r in reversed_beyond_noise):
        return "not reproduced"
    return "inconclusive"


def gap_verdict(reference: Tuple[str, float, float], variants: Sequence[Tuple[str, float, float]],
                max_increase: float) -> str:
    """reproduced: every variant within max_increase of the reference; not reproduced: one beyond it by more
    than the seed spreads; inconclusive otherwise."""
    _, base, base_spread = reference
    increases = [(m - base) / base for _, m, _ in variants]
    noise = [(s + base_spread) / base for _, _, s in variants]
    if all(i <= max_increase for i in increases):
        return "reproduced"
    if any(i - n > max_increase for i, n in zip(increases, noise)):
        return "not reproduced"
    return "inconclusive"


def region_share(head_LxH: np.ndarray, region: str, seq_len: int) -> float:
    """Share of the heads of a region (see ShareClaim) in its entropy range, against log T."""
    from aero_jax.entropy import entropy_range_shares

    half = max(1, head_LxH.shape[0] // 2)
    parts = {"early_top": head_LxH[:half], "deep_bottom": head_LxH[half:] if head_LxH.shape[0] > 1 else head_LxH,
             "all_top": head_LxH}
    shares = np.asarray(entropy_range_shares(parts[region], max_reference="log_t", seq_len=seq_len))
    return float(shares[0] if region == "deep_bottom" else shares[-1])


def run_region_shares(study: Study, claim, root: str) -> Dict[str, Optional[float]]:
    """{run: mean share over the seeds that have an evaluation, or None}, in the claim's order."""
    from aero_jax.reports import newest_head_entropy

    out = {}
    for run in (next(r for r in study.runs if r.name == name) for name in claim_runs(claim)):
        values = []
        for seed in run.seeds:
            try:
                values.append(region_share(newest_head_entropy(workdir_of(root, run, seed)), claim.region,
                                           study.size["max_len"]))
            except ConfigError:  # no evaluation was written before the run ended
                continue
        out[run.name] = float(np.mean(values)) if values else None
    return out


def share_verdict(shares: Mapping[str, Optional[float]], claim: ShareClaim) -> str:
    """reproduced: every `larger` run above every `smaller` one; not reproduced: every one below; else inconclusive."""
    if any(v is None for v in shares.values()):
        return "inconclusive"
    larger = [shares[n] for n in claim.larger]
    smaller = [shares[n] for n in claim.smaller]
    if min(larger) > max(smaller):
        return "reproduced"
    if max(larger) < min(smaller):
        return "not reproduced"
    return "inconclusive"


def instability_lines(study: Study, claim: InstabilityClaim, summaries, root: str) -> List[str]:
    """Per seed of `claim.run`: where it diverged, its first non-finite attention (step, layers), its perplexity."""
    from aero_jax.run_log import read_metrics

    (_, reference, _), = claim_perplexity(study, [claim.reference], summaries)
    run = next(r for r in study.runs if r.name == claim.run)
    rows, unstable = [], []
    for seed in run.seeds:
        summary = summaries[(run.name, seed)]
        workdir = workdir_of(root, run, seed)
        records = read_metrics(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
        bad = next((r for r in records if r["kind"] == "train" and sum(r.get("nonfinite_attention") or [0]) > 0), None)
        diverged = "diverged" in summary
        ratio = summary["validation_perplexity"] / reference
        unstable.append(diverged or bad is not None or ratio >= claim.factor)
        diverged_at = str(summary["step"]) if diverged else "no"
        first_bad = "none"
        if bad is not None:
            layers = [i for i, count in enumerate(bad["nonfinite_attention"]) if count]
            first_bad = f"step {bad['step']}, layers {layers}"
        perplexity = "-" if diverged else f"{summary['validation_perplexity']:.3f}"
        ratio_text = f"{ratio:.2f}" if math.isfinite(ratio) else "-"
        rows.append(f"| {seed} | {diverged_at} | {first_bad} | {perplexity} | {ratio_text} |")
    result = "reproduced" if all(unstable) else "not reproduced" if not any(unstable) else "inconclusive"
    return [f"Claimed: {claim.run} is unstable (diverges, shows non-finite attention, or ends at {claim.factor:g}x "
            f"the perplexity of {claim.reference} or worse).", "",
            f"| seed | diverged at step | first non-finite attention | perplexity | ratio to {claim.reference} |",
            "|---|---|---|---|---|", *rows, "", f"Verdict: **{result}**.", ""]


def temperature_snapshots(workdir: str) -> Dict[int, np.ndarray]:
    """{step: t [layers, heads, positions]} from the initial value and every kept checkpoint of a run."""
    from aero_jax.evaluate import load_run_config, saved_params
    from aero_jax.model import temperatures

    model_config = model_config_from(load_run_config(workdir).model)
    snapshots = {0: np.full((model_config.num_layers, model_config.num_heads, model_config.max_len),
                            model_config.temperature_init)}
    for step, params in saved_params(workdir):
        snapshots[step] = np.stack([np.asarray(temperatures(params[f"block_{layer}"]["attn"], model_config))
                                    for layer in range(model_config.num_layers)])
    return snapshots


def temperature_entropy_correlation(t_LxHxT: np.ndarray, entropy_LxH: np.ndarray) -> Tuple[float, float]:
    """Spearman's rank correlation (and its p-value) between each head's mean log t and its entropy."""
    from scipy.stats import spearmanr

    result = spearmanr(np.log(t_LxHxT).mean(-1).ravel(), np.asarray(entropy_LxH).ravel())
    return float(result.statistic), float(result.pvalue)


def temperature_lines(study: Study, claim: TemperatureClaim, root: str) -> List[str]:
    """The claim's table (mean t per layer at every saved step, the correlation per seed) and verdict."""
    from aero_jax.reports import newest_head_entropy

    run = next(r for r in study.runs if r.name == claim.run)
    correlations, snapshots = [], {}
    for seed in run.seeds:
        workdir = workdir_of(root, run, seed)
        snapshots[seed] = temperature_snapshots(workdir)
        correlations.append((seed, *temperature_entropy_correlation(snapshots[seed][max(snapshots[seed])],
                                                                    newest_head_entropy(workdir))))
    positive = [rho > 0 and p < 0.05 for _, rho, p in correlations]
    negative = [rho < 0 and p < 0.05 for _, rho, p in correlations]
    result = "reproduced" if all(positive) else "not reproduced" if any(negative) else "inconclusive"
    first = snapshots[run.seeds[0]]
    layers = first[0].shape[0]
    return [f"Claimed: t > 1 spreads a head's attention and t < 1 sharpens it, so across the heads of {claim.run} "
             f"the mean log t and the attention entropy rise together.", "",
             f"Mean t over heads and positions, seed {run.seeds[0]}, at each kept checkpoint (step 0: the initial "
             f"value); min-max over heads and positions in brackets:", "",
             "| step | " + " | ".join(f"layer {layer}" for layer in range(layers)) + " |",
             "|---|" + "---|" * layers,
             *[f"| {step} | " + " | ".join(f"{t[layer].mean():.4g} [{t[layer].min():.4g}, {t[layer].max():.4g}]"
                                           for layer in range(layers)) + " |" for step, t in sorted(first.items())],
             "", "| seed | Spearman correlation of mean log t and head entropy | p-value |", "|---|---|---|",
             *[f"| {seed} | {rho:+.3f} | {p:.3g} |" for seed, rho, p in correlations], "",
             f"Verdict: **{result}** (a positive correlation at p < 0.05 in every seed).", ""]


def substitute_result(study: Study, claim: SubstituteClaim, root: str, out: str) -> dict:
    """aero-ln-substitute's result for `claim.run`'s first seed, computed once and kept in OUT."""
    from aero_jax.ln_substitute import substitute_report

    run = run_named(study, claim.run)
    cached = os.path.join(out, f"ln_substitute_{presets.slug(run.name)}_ft{claim.finetune_steps}.json")
    if os.path.exists(cached):
        with open(cached) as f:
            return json.load(f)
    result = substitute_report(workdir_of(root, run, run.seeds[0]), finetune_steps=claim.finetune_steps)
    write_text_atomically(epath.Path(cached), json.dumps(result, indent=1))
    return result


def substitute_lines(study: Study, claim: SubstituteClaim, root: str, out: str) -> List[str]:
    """The LayerNorm substitute's perplexities and communication saved, and the verdict."""
    result = substitute_result(study, claim, root, out)
    before = result["perplexity_with_layernorm"]
    after = result.get("perplexity_substitute_finetuned", result["perplexity_folded"])
    saved = result["pi_cost_with_layernorm"]["comm_gb"] / result["pi_cost_substitute"]["comm_gb"]
    increase = after / before - 1
    verdict_text = "reproduced" if increase <= claim.max_increase else "not reproduced"
    return [f"Claimed: after the substitute and {claim.finetune_steps} fine-tuning steps, {claim.run} is within "
            f"{claim.max_increase:.0%} of its perplexity with LayerNorm.", "",
            "| with LayerNorm | substitute (calibrated) | folded | fine-tuned | communication saved |",
            "|---|---|---|---|---|",
            f"| {before:.3f} | {result['perplexity_substitute']:.3f} | {result['perplexity_folded']:.3f} | "
            f"{after:.3f} | {saved:.2f}x at this size |", "",
            f"Verdict: **{verdict_text}** ({increase:+.1%}).", ""]


# -- the figures of a claim -----------------------------------------------------------------------------

def run_named(study: Study, name: str) -> RunSpec:
    return next(r for r in study.runs if r.name == name)


def per_layer_series(workdirs: Mapping[str, str], metric: str) -> Dict[str, Tuple[List[int], np.ndarray]]:
    """{run: (steps, values [steps, layers])} of a per-layer training metric, for the runs that logged it."""
    series = {name: metric_series(workdir, "train", metric) for name, workdir in workdirs.items()}
    return {name: (steps, np.asarray(values)) for name, (steps, values) in series.items() if steps}


def claim_figures(study: Study, claim, root: str, out: str, key: str) -> List[str]:
    """The figures that show a claim, drawn from the runs' files with aero-report's figure functions and
    written to OUT/<key>_<figure>.png; their paths."""
    from aero_jax import figures as figure_lib
    from aero_jax.entropy import entropy_range_shares
    from aero_jax.reports import newest_head_entropy

    runs = [run_named(study, name) for name in claim_runs(claim)]
    first = {run.name: workdir_of(root, run, run.seeds[0]) for run in runs}
    made = {}
    if isinstance(claim, (OrderClaim, GapClaim, InstabilityClaim)):
        curves = {run.name: [c for c in (metric_series(workdir_of(root, run, seed), "eval", "perplexity")
                                         for seed in run.seeds) if c[0]] for run in runs}
        made["validation"] = figure_lib.validation_curves({n: c for n, c in curves.items() if c},
                                                          title="Validation perplexity (mean over seeds, range shaded)")
    if isinstance(claim, InstabilityClaim):
        for metric, what in (("nonfinite_attention", "Non-finite attention probabilities per layer"),
                             ("layer_entropy", "Mean attention entropy of each layer during training")):
            made[metric] = figure_lib.per_layer_curves(per_layer_series(first, metric), title=what,
                                                       value_label=metric.replace("_", " "))
    if isinstance(claim, (ShareClaim, TrendClaim)):
        evaluated = {n: w for n, w in first.items() if glob.glob(os.path.join(w, "eval", "head_entropy_step*.npy"))}
        entropy = {n: newest_head_entropy(w) for n, w in evaluated.items()}
        made["entropy_ranges"] = figure_lib.range_shares(
            {n: entropy_range_shares(e, max_reference="log_t", seq_len=study.size["max_len"])
             for n, e in entropy.items()}, title="Share of heads per entropy range (newest evaluation, first seed)",
            legend_title="entropy range (M = log T)")
        made["head_entropy"] = figure_lib.heatmaps(entropy, value_label="entropy (nats)",
                                                   title="Attention entropy of each head (newest evaluation)")
        made["layer_entropy"] = figure_lib.per_layer_curves(
            per_layer_series(evaluated, "layer_entropy"), title="Mean attention entropy of each layer during training",
            value_label="entropy (nats)")
    if isinstance(claim, TemperatureClaim):
        made["temperatures"] = figure_lib.temperature_evolution(
            temperature_snapshots(first[claim.run]), title=f"{claim.run}, first seed: learned temperature t")
    if isinstance(claim, SubstituteClaim):
        result = substitute_result(study, claim, root, out)
        made["substitute"] = figure_lib.bars(
            {"with LayerNorm": result["perplexity_with_layernorm"],
             "substitute": result["perplexity_substitute"], "folded": result["perplexity_folded"],
             "fine-tuned": result.get("perplexity_substitute_finetuned", result["perplexity_folded"])},
            title=f"{claim.run}: the LayerNorm substitute", value_label="validation perplexity")
    return [figure_lib.save(fig, os.path.join(out, f"{key}_{name}.png")) for name, fig in made.items()]


# -- the page ---------------------------------------------------------------------------------------

def pi_columns(study: Study, run: RunSpec) -> dict:
    """Communication and latency at the run's size and at GPT-2 small, T=128, with savings against SM+LN+G."""
    from aero_jax.pi.cost import pi_cost

    name = presets.resolve(run.preset)
    here = pi_cost(presets.model_config(name, size="tiny", **study.size), name=name)
    paper = pi_cost(presets.model_config(name, size="tiny", **PAPER_SIZE), name=name)
    return {"ops": here["nonlinear_ops"], "comm": here["comm_gb"], "latency": here["latency_min"],
            "comm_saving": here["comm_saving"], "paper_comm": paper["comm_gb"],
            "paper_latency": paper["latency_min"], "paper_comm_saving": paper["comm_saving"]}


def pareto_front(points: Sequence[Tuple[str, float, float]]) -> List[str]:
    """Names of the points no other point beats on both cost (x) and perplexity (y)."""
    return [n for n, x, y in points
            if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for _, x2, y2 in points)]


def trend_verdict(shares: Sequence[Optional[float]]) -> str:
    """reproduced: strictly growing; not reproduced: never growing; inconclusive otherwise or without data."""
    if any(v is None for v in shares):
        return "inconclusive"
    steps = [b - a for a, b in zip(shares[:-1], shares[1:])]
    return "reproduced" if all(d > 0 for d in steps) else "not reproduced" if all(d <= 0 for d in steps) else \
        "inconclusive"


def _claim_lines(study: Study, claim, summaries, root: str, out: str) -> List[str]:
    """A claim's table of measured values and its verdict."""
    if isinstance(claim, TrendClaim):
        shares = run_region_shares(study, claim, root)
        return [f"Claimed: the share of heads in [3/4, 1] log T grows along {', '.join(claim.runs)}.", "",
                "| run | share |", "|---|---|",
                *[f"| {n} | {'no evaluation' if v is None else f'{v:.1%}'} |" for n, v in shares.items()], "",
                f"Verdict: **{trend_verdict(list(shares.values()))}**.", ""]
    if isinstance(claim, InstabilityClaim):
        return instability_lines(study, claim, summaries, root)
    if isinstance(claim, SubstituteClaim):
        return substitute_lines(study, claim, root, out)
    if isinstance(claim, TemperatureClaim):
        return temperature_lines(study, claim, root)
    if isinstance(claim, ShareClaim):
        shares = run_region_shares(study, claim, root)
        what = ("heads of the first half of the layers in [3/4, 1] log T" if claim.region == "early_top" else
                "heads of the second half of the layers in [0, 1/4) log T")
        return [f"Claimed: {', '.join(claim.larger)} have a larger share of {what} than {', '.join(claim.smaller)}.",
                "", "| run | share |", "|---|---|",
                *[f"| {n} | {'no evaluation' if v is None else f'{v:.1%}'} |" for n, v in shares.items()], "",
                f"Verdict: **{share_verdict(shares, claim)}**.", ""]
    if isinstance(claim, OrderClaim):
        measured = claim_perplexity(study, claim.order, summaries)
        head = f"Claimed order, lowest perplexity first: {' < '.join(claim.order)}."
        result = f"**{verdict(measured)}** (each step must hold by more than the seed spread)"
    else:
        measured = claim_perplexity(study, (claim.reference, *claim.variants), summaries)
        head = (f"Claimed: {', '.join(claim.variants)} within {claim.max_increase:.0%} of {claim.reference}'s "
                f"perplexity.")
        result = (f"**{gap_verdict(measured[0], measured[1:], claim.max_increase)}** (increases: "
                  f"{', '.join(f'{n} {(m - measured[0][1]) / measured[0][1]:+.1%}' for n, m, _ in measured[1:])})")
    return [head, "", "| run | mean perplexity | spread over seeds |", "|---|---|---|",
            *[f"| {n} | {m:.3f} | {s:.3f} |" if math.isfinite(m) else f"| {n} | diverged | - |"
              for n, m, s in measured],
            "", f"Verdict: {result}.", ""]


def last_interval_change(workdir: str) -> Optional[float]:
    """Relative change of the validation perplexity between a run's last two evaluations: is it still falling?"""
    _, perplexity = metric_series(workdir, "eval", "perplexity")
    return perplexity[-1] / perplexity[-2] - 1 if len(perplexity) > 1 else None


def headline(study: Study, summaries, costs: Mapping[str, dict]) -> str:
    """One sentence: the headline run's communication saving against the baseline at its perplexity."""
    baseline, run = study.headline
    (_, base, _), (_, mean, _) = claim_perplexity(study, [baseline, run], summaries)
    saving = costs[baseline]["paper_comm"] / costs[run]["paper_comm"]
    return (f"Headline: {run} needs {saving:.1f}x less communication than {baseline} (GPT-2 small, T=128, the PI "
            f"cost model) at validation perplexity {mean:.3f} against {base:.3f} ({mean / base - 1:+.1%}) here.")


def write_page(study: Study, summaries, out: str, command: str, root: str) -> str:
    """OUT.md: the runs' table with PI columns, the validation curves, the claims with their verdicts and figures."""
    from aero_jax import figures as figure_lib

    page = out.rstrip("/") + ".md"
    rows, points = [], []
    costs = {run.name: pi_columns(study, run) for run in study.runs}
    for run in study.runs:
        (_, mean, spread), = claim_perplexity(study, [run.name], summaries)
        first = summaries[(run.name, run.seeds[0])]
        diverged = [s for s in run.seeds if "diverged" in summaries[(run.name, s)]]
        cost = costs[run.name]
        changes = [c for c in (last_interval_change(workdir_of(root, run, seed)) for seed in run.seeds)
                   if c is not None]
        perplexity = (f"diverged (seed {', '.join(map(str, diverged))}; step "
                      f"{', '.join(str(summaries[(run.name, s)]['step']) for s in diverged)})" if diverged else
                      f"{mean:.3f}" + (f" ± {spread / 2:.3f}" if len(run.seeds) > 1 else ""))
        rows.append(f"| {run.name} | {first['architecture']} | {len(run.seeds)} | {first['step']} | {perplexity} | "
                    f"{f'{np.mean(changes):+.1%}' if changes and not diverged else '-'} | {cost['ops']} | "
                    f"{cost['comm']:.3f} | {cost['latency']:.3f} | {cost['comm_saving']:.2f}x | "
                    f"{cost['paper_comm']:.2f} | {cost['paper_latency']:.2f} | {cost['paper_comm_saving']:.2f}x |")
        if not diverged:
            points.append((run.name, cost["paper_comm"], mean))
    front = pareto_front(points)
    trade_off = figure_lib.save(figure_lib.trade_off(points, front, x_label="communication, GPT-2 small T=128 (GB)"),
                                os.path.join(out, "trade_off.png"))
    curves = {run.name: [c for c in (metric_series(workdir_of(root, run, seed), "eval", "perplexity")
                                     for seed in run.seeds) if c[0]] for run in study.runs}
    validation = figure_lib.save(figure_lib.validation_curves(
        {n: c for n, c in curves.items() if c}, title="Validation perplexity of every run (mean over seeds)"),
        os.path.join(out, "validation.png"))

    def link(path: str) -> str:
        return os.path.relpath(path, os.path.dirname(page) or ".")

    size = ", ".join(f"{f}={study.size[f]}" for f in SIZE_FIELDS)
    lines = [f"# {study.name}: the papers' claims, tested by our own runs", "",
             f"Made by `{command}` on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}), {datetime.date.today().isoformat()}. Every number below is "
             f"read from the runs' `summary.json` and the PI cost model; rerun the command to regenerate it.", "",
             f"Config `{study.config}` at {size}.", "",
             *([headline(study, summaries, costs), ""] if study.headline else []), "## Runs", "",
             "| run | architecture | seeds | steps | validation perplexity (mean ± half range) | change over the last "
             "evaluation interval | nonlinear ops | comm GB | latency min | comm saving | comm GB, GPT-2 small | "
             "latency min, GPT-2 small | comm saving, GPT-2 small |", "|---" * 13 + "|",
             *rows, "",
             f"![perplexity against communication]({link(trade_off)})", "",
             f"Pareto front (no other run has both lower communication and lower perplexity): {', '.join(front)}.",
             "", f"![validation perplexity of every run]({link(validation)})", "", "## Claims", ""]
    for index, claim in enumerate(study.claims, start=1):
        lines += [f"### {claim.title}", ""] + _claim_lines(study, claim, summaries, root, out)
        lines += [f"![{os.path.basename(path)}]({link(path)})" for path in
                  claim_figures(study, claim, root, out, f"claim{index}")] + [""]
    if study.differences:
        lines += ["## What differs from the papers and why", "", study.differences.strip(), ""]
    write_text_atomically(epath.Path(page), "\n".join(lines))
    return page


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


def _run(args) -> None:
    study = load_study(args.spec)
    root = args.workdirs or os.path.join("workdirs", study.name)
    check_output_folder(root, flag="--workdirs")  # before anything is written; the dry run refuses the same
    if args.dry_run:
        check_out_folder(args.out, study)
        for run in study.runs:
            for seed in run.seeds:
                config = run_config(study, run, seed)
                print(json.dumps({"run": run.name, "seed": seed, "preset": config.model.preset,
                                  "num_steps": config.train.num_steps, "batch_size": config.train.batch_size,
                                  "dataset": config.data.dataset, "workdir": workdir_of(root, run, seed),
                                  "command": f"aero-train --config={study.config} --workdir="
                                             f"{workdir_of(root, run, seed)} {_override_flags(study, run, seed)}"}))
        return
    claim_out_folder(args.out, study)
    summaries = run_all(study, root)
    command = " ".join(["aero-study", *sys.argv[1:]]) if sys.argv[0].endswith("aero-study") else \
        f"aero-study --spec {args.spec} --out {args.out}"
    print(f"written: {write_page(study, summaries, args.out, command, root)}")


def _override_flags(study: Study, run: RunSpec, seed: int) -> str:
    """The --config.* flags that make `aero-train` train this run."""
    flags = [f"--config.model.preset={presets.slug(presets.resolve(run.preset))}", f"--config.seed={seed}"]
    flags += [f"--config.model.{f}={study.size[f]}" for f in SIZE_FIELDS]
    train = {**dict(study.train), **({"num_steps": run.steps} if run.steps else {})}
    flags += [f"--config.train.{k}={v}" for k, v in train.items()]
    flags += [f"--config.{path}={value}" for path, value in run.overrides.items()]
    return " ".join(flags)


def main(argv=None):
    from aero_jax import figures

    figures.files_only()
    # Ctrl-C stops the study even where it started ignored (a script's background job), as the trainer's loop
    # honours it: otherwise a SIGINT between runs (setting up the next) would be lost.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(prog="aero-study", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="a study file, e.g. studies/paper_claims.py[:variant]")
    parser.add_argument("--out", default="docs/results", help="figures and the report; the page is OUT.md")
    parser.add_argument("--workdirs", default="", help="where the runs' workdirs live (default workdirs/<study>)")
    parser.add_argument("--dry-run", action="store_true", help="print each run's config and command, train nothing")
    argparse_main("aero-study", parser, _run, argv,
                  interrupted=lambda: "the runs trained so far are kept; rerun the same command to resume")


if __name__ == "__main__":
    main()
