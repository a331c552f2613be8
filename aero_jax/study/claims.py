"""The claims a study tests. Each claim type names its runs, measures them, gives one of four verdicts, and draws
its figures with the papers' value beside ours; adding a claim is one class here."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from etils import epath

from aero_jax import figures, presets
from aero_jax.config import ConfigError
from aero_jax.entropy import MAX_REFERENCES, entropy_range_shares
from aero_jax.evaluate import restore_run, run_data
from aero_jax.ln_substitute import substitute_report
from aero_jax.reports import newest_evaluation
from aero_jax.run_log import metric_series, read_metrics
from aero_jax.study import measures
from aero_jax.study.spec import Condition, Study, run_config, workdir_of
from aero_jax.workdir import write_text_atomically

VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not testable here")


@dataclasses.dataclass
class Context:
    """What a claim reads: the study, its runs' summaries, the runs' root folder and the page's folder."""

    study: Study
    summaries: Mapping[Tuple[str, int], dict]
    root: str
    out: str

    def workdirs(self, name: str) -> List[str]:
        run = self.study.run(name)
        return [workdir_of(self.root, run, seed) for seed in run.seeds]

    def measured(self, names: Sequence[str]) -> List[measures.Measured]:
        return [measures.mean_and_spread(n, [s["validation_perplexity"] for (run, _), s in self.summaries.items()
                                             if run == n]) for n in names]

    def config(self, name: str):
        run = self.study.run(name)
        return run_config(self.study, run, run.seeds[0])

    def unmet(self, condition: Optional[Condition], names: Sequence[str]) -> List[str]:
        """What the claim's runs lack of its condition, over all of them, each lack once."""
        if condition is None:
            return []
        return list(dict.fromkeys(lack for n in names for lack in condition.unmet(self.config(n))))

    def head_entropies(self, name: str) -> Dict[int, Tuple[int, np.ndarray]]:
        """{seed: (step, head entropy [L, H]) of its newest evaluation} for the seeds that have one (a run that
        diverged has its last one, or none before its first evaluation)."""
        found = {}
        for seed, workdir in zip(self.study.run(name).seeds, self.workdirs(name)):
            try:
                found[seed] = newest_evaluation(workdir)
            except ConfigError:
                continue
        return found

    def share(self, name: str, entropy_range: str, reference: str) -> Optional[float]:
        """The run's share of heads in the range, mean over its evaluated seeds; None without an evaluation."""
        values = [measures.range_share(e, entropy_range, reference=reference, seq_len=self.study.size["max_len"])
                  for _, e in self.head_entropies(name).values()]
        return float(np.mean(values)) if values else None

    def curves(self, names: Sequence[str]) -> Dict[str, list]:
        """{run: [(steps, validation perplexities) of each seed]} for the runs that evaluated."""
        curves = {n: [c for c in (metric_series(w, "eval", "perplexity") for w in self.workdirs(n)) if c[0]]
                  for n in names}
        return {n: c for n, c in curves.items() if c}


@dataclasses.dataclass
class Outcome:
    """A claim's measured table (markdown lines), its verdict with the reason, and its figures."""

    lines: List[str]
    verdict: str
    reason: str
    figures: Dict[str, object]


def judged(measured: measures.Verdict, unmet: Sequence[str]) -> Tuple[str, str]:
    """(verdict, reason): a result that is not a reproduction, from runs that lack the papers' condition, is not
    testable here; a reproduction without it says so."""
    verdict, why = measured
    if unmet and verdict != "reproduced":
        return "not testable here", (f"measured {verdict}: {why}; the runs lack the papers' condition: "
                                     f"{'; '.join(unmet)}")
    if unmet:
        return verdict, f"{why}; even without the papers' condition: {'; '.join(unmet)}"
    return verdict, why


def _percent(value: Optional[float]) -> str:
    return "no evaluation" if value is None else f"{value:.1%}"


def _paper(value: Optional[float], fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _relative(values: Mapping[str, float], base: str) -> Dict[str, float]:
    if not math.isfinite(values.get(base, math.inf)):
        return {}
    return {n: v / values[base] for n, v in values.items() if math.isfinite(v)}


@dataclasses.dataclass(frozen=True)
class Claim:
    """A published statement and the runs that test it. `source` quotes or locates the papers' words."""

    title: str
    extension = False  # True: this project's own claim, labelled so on the page

    def runs(self) -> Tuple[str, ...]:
        raise NotImplementedError

    def check(self, study: Study) -> None:
        """Refuse, as bad input, a claim the study's runs cannot measure."""

    def outcome(self, ctx: Context) -> Outcome:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class OrderClaim(Claim):
    """A published perplexity order: `order` lists run names from the lowest perplexity to the highest."""

    order: Tuple[str, ...] = ()
    paper: Mapping[str, float] = dataclasses.field(default_factory=dict)  # the papers' perplexities
    condition: Optional[Condition] = None
    source: str = ""

    def runs(self):
        return self.order

    def outcome(self, ctx):
        measured = ctx.measured(self.order)
        verdict, reason = judged(measures.order_verdict(measured), ctx.unmet(self.condition, self.order))
        lines = [f"Claimed order, lowest perplexity first: {' < '.join(self.order)}. {self.source}".strip(), "",
                 *_perplexity_table(measured, self.paper),
                 f"A step holds when its gap exceeds the seed spread of both runs, and at least "
                 f"{measures.ONE_SEED_NOISE:.0%} of the perplexity (the noise of one seed).", ""]
        made = {"validation": figures.validation_curves(ctx.curves(self.order), title="Validation perplexity "
                                                        "(mean over seeds, range shaded)")}
        paper = {n: self.paper[n] for n in self.order if n in self.paper}
        if self.order[0] in paper and len(paper) > 1:  # a ratio to the first run needs its value
            ours = {n: m for n, m, _ in measured}
            made["versus_paper"] = figures.versus_paper(
                _relative(ours, self.order[0]), _relative(paper, self.order[0]),
                title=f"Perplexity relative to {self.order[0]}", value_label=f"perplexity / {self.order[0]}'s")
        return Outcome(lines, verdict, reason, made)


def _perplexity_table(measured: Sequence[measures.Measured], paper: Mapping[str, float]) -> List[str]:
    return ["| run | mean perplexity | spread over seeds | the papers (GPT-2 small, CodeParrot) |", "|---|---|---|---|",
            *[f"| {n} | {m:.3f} | {s:.3f} | {_paper(paper.get(n))} |" if math.isfinite(m) else
              f"| {n} | diverged | - | {_paper(paper.get(n))} |" for n, m, s in measured], ""]


@dataclasses.dataclass(frozen=True)
class GapClaim(Claim):
    """A published "costs little perplexity": each variant within `max_increase` (relative) of the reference."""

    reference: str = ""
    variants: Tuple[str, ...] = ()
    max_increase: float = 0.05
    paper: Mapping[str, float] = dataclasses.field(default_factory=dict)
    condition: Optional[Condition] = None
    source: str = ""

    def runs(self):
        return (self.reference, *self.variants)

    def outcome(self, ctx):
        measured = ctx.measured(self.runs())
        base = measured[0][1]
        increases = {n: m / base - 1 for n, m, _ in measured[1:]}
        verdict, reason = judged(measures.gap_verdict(measured[0], measured[1:], self.max_increase),
                                 ctx.unmet(self.condition, self.runs()))
        increases = {n: i for n, i in increases.items() if math.isfinite(i)}
        paper = {n: self.paper[n] / self.paper[self.reference] - 1 for n in self.variants
                 if n in self.paper and self.reference in self.paper}
        lines = [f"Claimed: {', '.join(self.variants)} within {self.max_increase:.0%} of {self.reference}'s "
                 f"perplexity. {self.source}".strip(), "", *_perplexity_table(measured, self.paper),
                 "| variant | increase here | the papers' increase |", "|---|---|---|",
                 *[f"| {n} | {i:+.1%} | {_paper(paper.get(n), '{:+.1%}')} |" for n, i in increases.items()], ""]
        made = {"validation": figures.validation_curves(ctx.curves(self.runs()), title="Validation perplexity "
                                                        "(mean over seeds, range shaded)"),
                "versus_paper": figures.versus_paper({n: 100 * i for n, i in increases.items()},
                                                     {n: 100 * i for n, i in paper.items()},
                                                     title=f"Perplexity increase over {self.reference}",
                                                     value_label="increase (%)", fmt="{:+.1f}")}
        return Outcome(lines, verdict, reason, made)


@dataclasses.dataclass(frozen=True)
class InstabilityClaim(Claim):
    """A published instability: `run` diverges or shows non-finite attention probabilities (the papers' NaNs).
    `reference`, a stable run, is drawn beside it."""

    run: str = ""
    reference: str = ""
    condition: Optional[Condition] = None
    source: str = ""  # the papers' observation

    def runs(self):
        return (self.run, self.reference)

    def outcome(self, ctx):
        rows, unstable = [], []
        for seed, workdir in zip(ctx.study.run(self.run).seeds, ctx.workdirs(self.run)):
            summary = ctx.summaries[(self.run, seed)]
            records = read_metrics(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
            bad = next((r for r in records if r["kind"] == "train" and sum(r.get("nonfinite_attention") or [0]) > 0),
                       None)
            diverged = "diverged" in summary
            unstable.append(diverged or bad is not None)
            first_bad = "none" if bad is None else (
                f"step {bad['step']}, layers {[i for i, n in enumerate(bad['nonfinite_attention']) if n]}")
            rows.append(f"| {seed} | {summary['step'] if diverged else 'no'} | {first_bad} | "
                        f"{'-' if diverged else format(summary['validation_perplexity'], '.3f')} |")
        measured = "reproduced" if all(unstable) else "not reproduced" if not any(unstable) else "inconclusive"
        why = f"{sum(unstable)} of {len(unstable)} seeds diverged or showed non-finite attention"
        verdict, reason = judged((measured, why), ctx.unmet(self.condition, (self.run,)))
        claimed = f"Claimed: {self.run} is unstable: it diverges or its attention turns non-finite. {self.source}"
        lines = [claimed.strip(), "", "| seed | diverged at step | first non-finite attention | perplexity |",
                 "|---|---|---|---|", *rows, ""]
        workdirs = {n: ctx.workdirs(n)[0] for n in self.runs()}
        made = {metric: figures.per_layer_curves(_per_layer_series(workdirs, metric), title=what,
                                                 value_label=metric.replace("_", " "))
                for metric, what in (("nonfinite_attention", "Non-finite attention probabilities per layer"),
                                     ("layer_entropy", "Mean attention entropy of each layer during training"))}
        return Outcome(lines, verdict, reason, made)


def _per_layer_series(workdirs: Mapping[str, str], metric: str) -> Dict[str, Tuple[List[int], np.ndarray]]:
    """{run: (steps, values [steps, layers])} of a per-layer training metric, for the runs that logged it."""
    series = {name: metric_series(workdir, "train", metric) for name, workdir in workdirs.items()}
    return {name: (steps, np.asarray(values)) for name, (steps, values) in series.items() if steps}


OBSERVED_M = ("M is \"the maximum observed entropy value among all heads\" of the model (2501.03489, Section 3), "
              "and the share is over all L x H heads; M = log T is shown beside it as a second reference.")


@dataclasses.dataclass(frozen=True)
class _EntropyRangeClaim(Claim):
    """Shares of heads in the papers' bottom [0, M/4) or top [3M/4, M] range, M the largest observed head
    entropy (primary) or log T (second); `paper` holds the papers' shares (0-1)."""

    entropy_range: str = "top"
    paper: Mapping[str, float] = dataclasses.field(default_factory=dict)
    condition: Optional[Condition] = None
    source: str = ""

    def check(self, study):
        if self.entropy_range not in measures.RANGES:
            raise ConfigError(f"claim {self.title!r}: entropy_range={self.entropy_range!r} is invalid; accepted: "
                              f"{', '.join(measures.RANGES)}")

    def shares(self, ctx) -> Dict[str, Dict[str, Optional[float]]]:
        return {ref: {n: ctx.share(n, self.entropy_range, ref) for n in self.runs()} for ref in MAX_REFERENCES}

    def table(self, ctx, shares) -> List[str]:
        heads = ctx.study.size["num_layers"] * ctx.study.size["num_heads"]
        what = "[3M/4, M]" if self.entropy_range == "top" else "[0, M/4)"
        steps = {n: ", ".join(str(step) for step, _ in ctx.head_entropies(n).values()) or "-" for n in self.runs()}
        return [f"Share of all {heads} heads in {what}. {OBSERVED_M} One head is 1/{heads} ({1 / heads:.2%}) of the "
                f"heads" + (": the head that sets M is always in the top range." if self.entropy_range == "top" else
                            "."), "",
                "| run | evaluated at step | share, M = largest observed (the papers' M) | share, M = log T | "
                "the papers |", "|---|---|---|---|---|",
                *[f"| {n} | {steps[n]} | {_percent(shares['observed'][n])} | {_percent(shares['log_t'][n])} | "
                  f"{_paper(self.paper.get(n), '{:.1%}')} |" for n in self.runs()], ""]

    def figures(self, ctx, shares) -> Dict[str, object]:
        first = {n: next(iter(found.values()))[1] for n in self.runs() for found in [ctx.head_entropies(n)] if found}
        what = "[3M/4, M]" if self.entropy_range == "top" else "[0, M/4)"
        made = {"versus_paper": figures.versus_paper(
            {n: 100 * v for n, v in shares["observed"].items() if v is not None},
            {n: 100 * v for n, v in self.paper.items()}, ours_extra={n: 100 * v for n, v in shares["log_t"].items()
                                                                     if v is not None},
            ours_label="this study, M = largest observed", extra_label="this study, M = log T",
            title=f"Share of heads in {what}", value_label="share of heads (%)", fmt="{:.1f}")}
        if first:
            made["entropy_ranges"] = figures.range_shares(
                {n: entropy_range_shares(e) for n, e in first.items()},
                title="Share of heads per entropy range (newest evaluation, first seed)",
                legend_title="entropy range (M = largest observed)")
            made["head_entropy"] = figures.heatmaps(  # one scale, 0 to log T, on every page
                first, value_label="entropy (nats)", vmin=0.0, vmax=float(np.log(ctx.study.size["max_len"])),
                title="Attention entropy of each head (newest evaluation, first seed)")
        return made


@dataclasses.dataclass(frozen=True)
class ShareClaim(_EntropyRangeClaim):
    """A published entropy pattern: the `larger` runs have more of their heads in the range than the `smaller`."""

    larger: Tuple[str, ...] = ()
    smaller: Tuple[str, ...] = ()

    def runs(self):
        return (*self.larger, *self.smaller)

    def outcome(self, ctx):
        shares = self.shares(ctx)
        verdict, reason = judged(measures.share_verdict(shares["observed"], self.larger, self.smaller),
                                 ctx.unmet(self.condition, self.runs()))
        lines = [f"Claimed: a larger share of heads in the {self.entropy_range} range for {', '.join(self.larger)} "
                 f"than for {', '.join(self.smaller)}. {self.source}".strip(), "",
                 *self.table(ctx, shares)]
        return Outcome(lines, verdict, reason, self.figures(ctx, shares))


@dataclasses.dataclass(frozen=True)
class TrendClaim(_EntropyRangeClaim):
    """A published trend: the share of heads in the range grows along `order` (e.g. a sweep of gamma)."""

    order: Tuple[str, ...] = ()

    def runs(self):
        return self.order

    def outcome(self, ctx):
        shares = self.shares(ctx)
        verdict, reason = judged(measures.trend_verdict(shares["observed"], self.order),
                                 ctx.unmet(self.condition, self.order))
        lines = [f"Claimed: the share of heads in the {self.entropy_range} range grows along "
                 f"{', '.join(self.order)}. {self.source}".strip(), "", *self.table(ctx, shares)]
        return Outcome(lines, verdict, reason, self.figures(ctx, shares))


@dataclasses.dataclass(frozen=True)
class TemperatureClaim(Claim):
    """The papers' property of SM(t): raising t spreads a head's attention. Tested by an intervention on the trained
    `run` (first seed): every t multiplied by each of `scales`, the weights fixed; and how far t moved from its
    initial value in training."""

    run: str = ""
    scales: Tuple[float, ...] = (0.5, 1.0, 2.0)

    def runs(self):
        return (self.run,)

    def check(self, study):
        if not run_config(study, study.run(self.run), study.run(self.run).seeds[0]).model.learnable_temperature:
            raise ConfigError(f"claim {self.title!r}: run {self.run} ({study.run(self.run).preset}) has no learnable "
                              f"temperature; accepted: a run of an SM(t) preset")

    def outcome(self, ctx):
        workdir = ctx.workdirs(self.run)[0]
        run = restore_run(workdir)
        _, val_rows = run_data(run.config, run.model.config.max_len)
        entropy = measures.temperature_intervention(run, val_rows, self.scales)
        rises, falls = measures.rising_heads(entropy)
        snapshots = measures.temperature_snapshots(workdir)
        config = run.model.config
        movement = measures.temperature_movement(snapshots[max(snapshots)], config.temperature_init)
        layers = range(len(movement))
        lines = [f"Claimed (2501.03489, Appendix A): t > 1 spreads a head's attention and t < 1 sharpens it. Every t "
                 f"of {self.run} (first seed, step {run.step}, {config.temperature_param} t) is multiplied by c, the "
                 f"weights fixed. In layer 0 the logits are then fixed too, so its entropy must rise (softmax "
                 f"entropy never falls as the temperature grows); deeper layers also see their inputs change.", "",
                 "| c | " + " | ".join(f"layer {i}" for i in layers) + " |", "|---|" + "---|" * len(layers),
                 *[f"| {c:g} | " + " | ".join(f"{e[i].mean():.4f}" for i in layers) + " |"
                   for c, e in sorted(entropy.items())],
                 "| heads rising with c | " + " | ".join(f"{rises[i].mean():.0%}" for i in layers) + " |",
                 "| heads falling | " + " | ".join(f"{falls[i].mean():.0%}" for i in layers) + " |", "",
                 "Mean head entropy of each layer (nats) at each c; a head rises when its entropy never falls and "
                 "ends higher.", "",
                 f"How far t moved in training: t / t_init at step {max(snapshots)} (t_init = "
                 f"{config.temperature_init:g}), min / median / max over each layer's heads and positions:", "",
                 "| layer | min | median | max |", "|---|---|---|---|",
                 *[f"| {i} | {lo:.4g} | {mid:.4g} | {hi:.4g} |" for i, (lo, mid, hi) in enumerate(movement)], ""]
        made = {"intervention": figures.intervention(entropy, title=f"{self.run}: head entropy with every t "
                                                     f"multiplied by c, weights fixed"),
                "temperatures": figures.temperature_evolution(snapshots, title=f"{self.run}, first seed: learned "
                                                              f"temperature t")}
        return Outcome(lines, *measures.intervention_verdict(rises, falls), made)


@dataclasses.dataclass(frozen=True)
class SubstituteClaim(Claim):
    """This project's extension (from the project's founding summary of AERO, not a measured claim of the papers):
    `run`, a LayerNorm model, served with the calibrated substitute (folded: exact) after `finetune_steps` steps of
    fine-tuning is within `max_increase` of the same model fine-tuned as long with its LayerNorm."""

    run: str = ""
    finetune_steps: int = 200
    max_increase: float = 0.05
    extension = True

    def runs(self):
        return (self.run,)

    def result(self, ctx) -> dict:
        """aero-ln-substitute's result for the run's first seed, kept in OUT and reused while it is of the same
        workdir, step, evaluation rows and fine-tune."""
        workdir, seed = ctx.workdirs(self.run)[0], ctx.study.run(self.run).seeds[0]
        cached = os.path.join(ctx.out, f"ln_substitute_{presets.slug(self.run)}_ft{self.finetune_steps}.json")
        if os.path.exists(cached):
            with open(cached) as f:
                result = json.load(f)
            summary = ctx.summaries[(self.run, seed)]
            if (result.get("workdir"), result.get("step"), result.get("validation_rows"), result.get(
                    "finetune_steps", 0)) == (workdir, summary["step"], summary.get("validation_rows"),
                                              self.finetune_steps):
                return result
        result = substitute_report(workdir, finetune_steps=self.finetune_steps)
        result.setdefault("finetune_steps", 0)
        write_text_atomically(epath.Path(cached), json.dumps(result, indent=1))
        return result

    def outcome(self, ctx):
        result = self.result(ctx)
        tuned = bool(self.finetune_steps)
        before = result["perplexity_with_layernorm_finetuned" if tuned else "perplexity_with_layernorm"]
        after = result["perplexity_substitute_finetuned" if tuned else "perplexity_folded"]
        saved = result["pi_cost_with_layernorm"]["comm_gb"] / result["pi_cost_substitute"]["comm_gb"]
        increase = after / before - 1
        values = {"with LayerNorm": result["perplexity_with_layernorm"],
                  "substitute": result["perplexity_substitute"], "folded": result["perplexity_folded"]}
        if tuned:
            values.update({"substitute, fine-tuned": after, "LayerNorm, fine-tuned": before})
        lines = [f"Claimed (the project's founding summary of AERO): served with the substitute after "
                 f"{self.finetune_steps} fine-tuning "
                 f"steps, {self.run} is within {self.max_increase:.0%} of the same model given the same "
                 f"{self.finetune_steps} steps with its LayerNorm, and saves communication.", "",
                 "| " + " | ".join(values) + " | communication saved |", "|---" * (len(values) + 1) + "|",
                 "| " + " | ".join(f"{v:.3f}" for v in values.values()) + f" | {saved:.2f}x at this size |", ""]
        made = {"substitute": figures.bars(values, title=f"{self.run}: the LayerNorm substitute",
                                           value_label="validation perplexity")}
        verdict = "reproduced" if increase <= self.max_increase else "not reproduced"
        return Outcome(lines, verdict, f"{increase:+.1%} against the limit +{self.max_increase:.0%}", made)
