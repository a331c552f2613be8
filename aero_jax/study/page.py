"""A study's page, OUT.md: the runs' table with private-inference costs, the validation curves, and each claim with
its table, verdict and figures; every number read from the runs' files."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from etils import epath

from aero_jax import figures, presets
from aero_jax.config import ConfigError
from aero_jax.pi.cost import pi_cost
from aero_jax.pi.measure import saved_measurement
from aero_jax.run_config import SIZE_FIELDS
from aero_jax.run_log import metric_series
from aero_jax.study.claims import VERDICTS, Context, Outcome
from aero_jax.study.spec import PAPER_SIZE, RunSpec, Study
from aero_jax.workdir import write_text_atomically


def pi_columns(study: Study, run: RunSpec, workdir: str, step: int) -> dict:
    """Communication and latency at the run's size and at GPT-2 small, T=128, with savings against SM+LN+G; and the
    communication aero-pi-measure measured for the run's checkpoint `step` at its size, when it has been measured."""
    name = presets.resolve(run.preset)
    here = pi_cost(presets.model_config(name, size="tiny", **study.size), name=name)
    paper = pi_cost(presets.model_config(name, size="tiny", **PAPER_SIZE), name=name)
    measured = saved_measurement(workdir, step, study.size["max_len"])
    return {"ops": here["nonlinear_ops"], "comm": here["comm_gb"], "latency": here["latency_min"],
            "measured_comm": measured and measured["total"]["scaled_bytes"] / 1e9,
            "comm_saving": here["comm_saving"], "paper_comm": paper["comm_gb"],
            "paper_latency": paper["latency_min"], "paper_comm_saving": paper["comm_saving"]}


def pareto_front(points: Sequence[Tuple[str, float, float]]) -> List[str]:
    """Names of the points no other point beats on both cost (x) and perplexity (y)."""
    return [n for n, x, y in points
            if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for _, x2, y2 in points)]


def last_interval_change(workdir: str) -> Optional[float]:
    """Relative change of the validation perplexity between a run's last two evaluations: is it still falling?"""
    _, perplexity = metric_series(workdir, "eval", "perplexity")
    return perplexity[-1] / perplexity[-2] - 1 if len(perplexity) > 1 else None


def headline(ctx: Context, costs: Mapping[str, dict]) -> str:
    """One sentence: the headline run's communication saving against the baseline at its perplexity."""
    baseline, run = ctx.study.headline
    (_, base, _), (_, mean, _) = ctx.measured([baseline, run])
    saving = costs[baseline]["paper_comm"] / costs[run]["paper_comm"]
    return (f"Headline: {run} needs {saving:.1f}x less communication than {baseline} (GPT-2 small, T=128, the PI "
            f"cost model) at validation perplexity {mean:.3f} against {base:.3f} ({mean / base - 1:+.1%}) here.")


def evaluated_rows(summaries: Mapping[Tuple[str, int], dict]) -> str:
    """Which validation rows the runs' perplexities cover, as their summaries state it (one statement when they
    agree, every distinct one otherwise), naming the finished runs whose summary does not say."""
    stated = sorted({s["validation_rows"] for s in summaries.values() if "validation_rows" in s})
    unstated = sorted({run for (run, _), s in summaries.items() if "validation_rows" not in s and "diverged" not in s})
    return "; ".join(stated or ["not recorded"]) + (f" (not recorded by {', '.join(unstated)})" if unstated else "")


def runs_table(ctx: Context, costs: Mapping[str, dict]) -> List[str]:
    with_measured = any(cost["measured_comm"] is not None for cost in costs.values())
    rows = []
    for run in ctx.study.runs:
        (_, mean, spread), = ctx.measured([run.name])
        first = ctx.summaries[(run.name, run.seeds[0])]
        diverged = [s for s in run.seeds if "diverged" in ctx.summaries[(run.name, s)]]
        cost = costs[run.name]
        changes = [c for c in map(last_interval_change, ctx.workdirs(run.name)) if c is not None]
        perplexity = (f"diverged (seed {', '.join(map(str, diverged))}; step "
                      f"{', '.join(str(ctx.summaries[(run.name, s)]['step']) for s in diverged)})" if diverged else
                      f"{mean:.3f}" + (f" ± {spread / 2:.3f}" if len(run.seeds) > 1 else ""))
        rows.append(f"| {run.name} | {first['architecture']} | {len(run.seeds)} | {first['step']} | {perplexity} | "
                    f"{f'{np.mean(changes):+.1%}' if changes and not diverged else '-'} | {cost['ops']} | "
                    f"{cost['comm']:.3f} | " + (f"{_or_dash(cost['measured_comm'], '.3f')} | " if with_measured else "")
                    + f"{cost['latency']:.3f} | {cost['comm_saving']:.2f}x | "
                    f"{cost['paper_comm']:.2f} | {cost['paper_latency']:.2f} | {cost['paper_comm_saving']:.2f}x |")
    measured = "comm GB measured (aero-pi-measure, Cheetah) | " if with_measured else ""
    return ["| run | architecture | seeds | steps | validation perplexity (mean ± half range) | change over the last "
            f"evaluation interval | nonlinear ops | comm GB | {measured}latency min | comm saving | comm GB, GPT-2 small | "
            "latency min, GPT-2 small | comm saving, GPT-2 small |", "|---" * (13 + with_measured) + "|", *rows, ""]


def _or_dash(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def claim_number(title: str) -> str:
    """"3a" of "3a. Entropic overload ..."."""
    return title.split(".")[0]


def changes_since(study: Study, verdicts: Mapping[str, str]) -> List[str]:
    """The study's earlier verdicts beside today's, with what changed in each test."""
    now = {claim_number(title): verdict for title, verdict in verdicts.items()}
    return [f"## {study.earlier_title}", "", "| claim | earlier | now | what changed in the test |", "|---|---|---|---|",
            *[f"| {number} | {before} | {now.get(number, 'not tested')} | {why} |"
              for number, (before, why) in study.earlier.items()], ""]


def write_page(study: Study, summaries, out: str, command: str, root: str) -> str:
    """OUT.md: the runs' table with PI columns, the validation curves, the claims with their verdicts and figures."""
    ctx = Context(study, summaries, root, out)
    page = out.rstrip("/") + ".md"

    def link(path: str) -> str:
        return os.path.relpath(path, os.path.dirname(page) or ".")

    def saved(key: str, fig) -> str:
        return link(figures.save(fig, os.path.join(out, f"{key}.png")))

    costs = {run.name: pi_columns(study, run, ctx.workdirs(run.name)[0], summaries[(run.name, run.seeds[0])]["step"])
             for run in study.runs}  # the measurement of the step the table evaluates
    names = [r.name for r in study.runs]
    points = [(n, costs[n]["paper_comm"], m) for n, m, _ in ctx.measured(names) if np.isfinite(m)]
    front = pareto_front(points)
    trade_off = saved("trade_off", figures.trade_off(points, front, x_label="communication, GPT-2 small T=128 (GB)"))
    validation = saved("validation", figures.validation_curves(
        ctx.curves(names), title="Validation perplexity of every run (mean over seeds)"))
    size = ", ".join(f"{f}={study.size[f]}" for f in SIZE_FIELDS)
    lines = [f"# {study.name}: the papers' claims, tested by our own runs", "",
             f"Made by `{command}` on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}), {datetime.date.today().isoformat()}. Every number below is "
             f"read from the runs' files and the PI cost model; rerun the command to regenerate it, and "
             f"`{command} --dry-run` prints the `aero-train` command of every run.", "",
             f"Config `{study.config}` at {size}. Every perplexity on this page is one evaluation "
             f"(`trainer.evaluate_rows`) over the same validation rows: {evaluated_rows(summaries)}.", "",
             *([headline(ctx, costs), ""] if study.headline else []),
             f"Verdicts, one of {len(VERDICTS)}: " + ", ".join(f"**{v}**" for v in VERDICTS) + ". \"Not testable "
             "here\" names the papers' condition the runs lack; it is given only to a result that is not a "
             "reproduction, since the papers' effect may appear only under their condition.", "",
             "## Runs", "", *runs_table(ctx, costs), f"![perplexity against communication]({trade_off})", "",
             f"Pareto front (no other run has both lower communication and lower perplexity): {', '.join(front)}.",
             "", f"![validation perplexity of every run]({validation})", ""]
    verdicts: Dict[str, str] = {}
    claim_lines = ["## Claims", ""]
    for index, claim in enumerate(study.claims, start=1):
        try:
            outcome = claim.outcome(ctx)
        except ConfigError as error:  # e.g. a run with no readable checkpoint: the other claims still count
            outcome = Outcome([], "inconclusive", f"cannot be measured: {error}", {})
        label = " (this project's extension)" if claim.extension else ""
        verdicts[claim.title + label] = outcome.verdict
        claim_lines += [f"### {claim.title}", ""]
        if claim.extension:
            claim_lines += ["*This project's extension, from its founding summary of AERO: not a measured claim of "
                            "the papers.*", ""]
        claim_lines += outcome.lines + [f"Verdict: **{outcome.verdict}** ({outcome.reason}).", ""]
        claim_lines += [f"![{key}]({saved(f'claim{index}_{key}', fig)})" for key, fig in outcome.figures.items()]
        claim_lines += [""]
    lines += ["## Verdicts", "", "| claim | verdict |", "|---|---|",
              *[f"| {title} | {verdict} |" for title, verdict in verdicts.items()], ""]
    if study.earlier:
        lines += changes_since(study, verdicts)
    lines += claim_lines
    if study.differences:
        lines += ["## What differs from the papers and why", "", study.differences.strip(), ""]
    write_text_atomically(epath.Path(page), "\n".join(lines))
    return page
