"""aero-study end to end on two tiny runs: interrupted, resumed, reported, and its page checked."""

import json
import pathlib
import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from conftest import BIN, assert_one_line, run_script

from aero_jax import presets
from aero_jax import study as study_lib
from aero_jax.config import ConfigError
from aero_jax.model import AeroLM, init_variables, temperatures
from aero_jax.run_log import read_metrics
from aero_jax.study import measures
from aero_jax.study.claims import judged
from aero_jax.study.page import pareto_front
from aero_jax.trainer import evaluate_rows, evaluation_rows

ROOT = pathlib.Path(__file__).resolve().parents[1]

SPEC = """
from aero_jax.study import (Condition, GapClaim, InstabilityClaim, OrderClaim, RunSpec, ShareClaim, Study,
                            SubstituteClaim, TemperatureClaim, TrendClaim)

DATA = {data!r}


def get_study(variant=""):
    runs = (RunSpec("A", "SM+LN+G", seeds=(0, 1), overrides=DATA), RunSpec("B", "{second}", overrides=DATA),
            RunSpec("{third_name}", "SM+R", overrides=DATA),
            RunSpec("D", "SM", overrides=dict(DATA, **{{"optim.peak_lr": 1e6}})),
            RunSpec("E", "SM(t)+ScFuFFN", overrides=DATA))
    claims = (OrderClaim("A before B", order=("A", "B"), paper={{"A": 2.0, "B": 3.0}}),
              OrderClaim("B before D", order=("B", "D")),
              OrderClaim("B before A at depth", order=("B", "A"), condition=Condition(num_layers=12)),
              GapClaim("B near A", reference="A", variants=("B",), max_increase=0.5),
              ShareClaim("collapse", entropy_range="bottom", larger=("D",), smaller=("B",), paper={{"D": 0.33}}),
              InstabilityClaim("D unstable", run="D", reference="A"),
              InstabilityClaim("A unstable", run="A", reference="B",
                               condition=Condition(num_layers=12, num_steps=30000, dtype="float16")),
              SubstituteClaim("substitute", run="A", finetune_steps=2, max_increase=10.0),
              TrendClaim("trend", entropy_range="top", order=("A", "B", "C")),
              TemperatureClaim("temperatures", run="E"))
    return Study(name="{name}", config="{config}", runs=runs, claims=claims,
                 size=dict(num_layers=2, num_heads=2, d_model=32, d_ff=64, vocab_size=257, max_len=32),
                 train=dict(num_steps=4, checkpoint_every=2, keep_checkpoints=4), differences="Tiny runs for a test.",
                 headline=("A", "B"))
"""


def write_spec(tmp_path, corpus, name="tiny", second="SM+R", third_name="C"):
    path = tmp_path / f"{name}.py"
    data = {f"data.{k}": v for k, v in corpus.items()}
    path.write_text(SPEC.format(data=data, second=second, third_name=third_name, name=name,
                                config=ROOT / "configs" / "default.py:smoke"))
    return path


@pytest.mark.slow  # six tiny runs, every claim type, and one run retrained from the dry run: about a minute
def test_a_study_runs_resumes_reports_and_writes_its_page(corpus, tmp_path, monkeypatch):
    spec = write_spec(tmp_path, corpus)
    out, workdirs = tmp_path / "results", tmp_path / "runs"
    study = study_lib.load_study(str(spec))
    import aero_jax.trainer

    original, calls = aero_jax.trainer.train, []

    def interrupted_on_the_second_job(config, workdir):
        calls.append(workdir)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user stops the study while the second run trains
        return original(config, workdir)

    monkeypatch.setattr(aero_jax.trainer, "train", interrupted_on_the_second_job)
    with pytest.raises(KeyboardInterrupt):
        study_lib.run_all(study, str(workdirs))
    first = workdirs / "a-seed0"
    first_records = read_metrics(first)
    monkeypatch.setattr(aero_jax.trainer, "train", original)

    study_lib.main(["--spec", str(spec), "--out", str(out), "--workdirs", str(workdirs)])
    assert read_metrics(first) == first_records  # finished runs are not trained again
    page = (tmp_path / "results.md").read_text()
    summaries = {p.name: json.loads((p / "summary.json").read_text()) for p in workdirs.iterdir()
                 if (p / "summary.json").exists()}
    a = [summaries[f"a-seed{s}"]["validation_perplexity"] for s in (0, 1)]
    row_a = next(line for line in page.splitlines() if line.startswith("| A |"))
    assert f"{sum(a) / 2:.3f} ± {(max(a) - min(a)) / 2:.3f}" in row_a
    row_b = next(line for line in page.splitlines() if line.startswith("| B |"))
    assert f"| {summaries['b-seed0']['validation_perplexity']:.3f} |" in row_b
    assert set(re.findall(r"Verdict: \*\*([\w ]+)\*\*", page)) <= set(study_lib.VERDICTS)
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page):
        path = tmp_path / image
        assert path.exists() and path.stat().st_size > 1000, image
    assert "Tiny runs for a test." in page and "Pareto front" in page and "Headline: B needs" in page
    assert "a fixed random sample of 8 of the" in page  # the rows every perplexity covers, stated once
    row_d = next(line for line in page.splitlines() if line.startswith("| D |"))
    assert "diverged (seed 0; step" in row_d and (workdirs / "d-seed0" / "diverged.json").exists()

    def section(title):
        return page.split(f"### {title}\n")[1].split("###")[0]

    assert "| A | " in section("A before B") and "| 2.00 |" in section("A before B")  # the papers' value beside ours
    assert "claim1_versus_paper.png" in section("A before B")
    assert "Verdict: **reproduced**" in section("B before D")  # a diverged run counts as the worst perplexity
    depth = section("B before A at depth")
    assert re.search(r"Verdict: \*\*not testable here\*\* \(measured (not reproduced|inconclusive): B -> A: .*; the runs "
                     r"lack the papers' condition: L=2 \(the papers: L=12\)\)", depth) or \
        "Verdict: **reproduced**" in depth and "even without the papers' condition: L=2" in depth
    assert re.search(r"Verdict: \*\*reproduced\*\* \(B \+\d+\.\d% \(noise \d+\.\d%\); limit \+50%\)", section("B near A"))
    collapse = section("collapse")
    assert "| D | - | no evaluation | no evaluation | 33.0% |" in collapse
    assert "Verdict: **inconclusive** (no evaluation of D)." in collapse
    assert "| 0 | 1 |" in section("D unstable") and "Verdict: **reproduced**" in section("D unstable")
    stable = section("A unstable")  # fp32, 4 steps: stable, which says nothing of the papers' fp16 runs
    assert "Verdict: **not testable here** (measured not reproduced: 0 of 2 seeds diverged or showed non-finite " \
           "attention; the runs lack the papers' condition: L=2 (the papers: L=12); 4 steps (the papers: ~30,000); " \
           "float32 (the papers: float16))" in stable
    substitute = section("substitute")
    assert "This project's extension" in substitute and "LayerNorm, fine-tuned" in substitute
    assert "Verdict: **reproduced**" in substitute and (out / "ln_substitute_a_ft2.json").exists()
    assert "M = largest observed" in section("trend") and "One head is 1/4 (25.00%) of the heads" in section("trend")
    temperatures = section("temperatures")
    assert "| heads rising with c | 100% | 100% |" in temperatures
    assert "Verdict: **reproduced** (100% of the heads rise with c, 0% fall)" in temperatures
    assert "claim10_intervention.png" in temperatures and "claim10_temperatures.png" in temperatures
    verdicts = page.split("## Verdicts")[1].split("## Claims")[0]
    assert "| D unstable | reproduced |" in verdicts and "| A unstable | not testable here |" in verdicts
    assert "| substitute (this project's extension) | reproduced |" in verdicts

    # Rerunnable: the dry run's command for B retrains it to the page's perplexity.
    dry = run_script("aero-study", "--spec", spec, "--out", out, "--workdirs", workdirs, "--dry-run")
    command = next(json.loads(line)["command"] for line in dry.stdout.splitlines() if json.loads(line)["run"] == "B")
    again = tmp_path / "b_again"
    retrained = run_script(*command.replace(str(workdirs / "b-seed0"), str(again)).split())
    assert retrained.returncode == 0, retrained.stderr[-2000:]
    assert json.loads((again / "summary.json").read_text())["validation_perplexity"] == pytest.approx(
        summaries["b-seed0"]["validation_perplexity"], rel=5e-3)


def test_bad_specs_and_outputs_are_refused_in_one_line(corpus, tmp_path):
    unknown = write_spec(tmp_path, corpus, name="unknown", second="SM+XL")
    assert_one_line(run_script("aero-study", "--spec", unknown, "--out", tmp_path / "o1"), "aero-study", 2,
                    "unknown preset 'SM+XL'")
    twice = write_spec(tmp_path, corpus, name="twice", third_name="A")
    assert_one_line(run_script("aero-study", "--spec", twice, "--out", tmp_path / "o2"), "aero-study", 2,
                    "names runs A more than once")
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.json").write_text(json.dumps({"study": "someone_else"}))
    good = write_spec(tmp_path, corpus, name="good")
    assert_one_line(run_script("aero-study", "--spec", good, "--out", other), "aero-study", 2,
                    "holds the study 'someone_else'")
    assert json.loads((other / "study.json").read_text()) == {"study": "someone_else"}


@pytest.mark.parametrize("text, expected", [
    ("def get_study(variant=''):\n    return (\n", "cannot be loaded (syntax error at line"),
    (None, "cannot be loaded (No such file or directory)"),
    ("def get_config(variant=''):\n    return {}\n", "cannot be loaded (no get_study)"),
    (SPEC.format(data={}, second="SM+R", third_name="C", name="tiny", config="absent_config.py"),
     "its config absent_config.py cannot be loaded (No such file or directory)"),
], ids=["syntax error", "no file", "no get_study", "no config"])
def test_a_spec_that_cannot_give_its_study_is_refused_in_one_line_naming_it(tmp_path, text, expected):
    spec = tmp_path / "spec.py"
    if text is not None:
        spec.write_text(text)
    result = run_script("aero-study", "--spec", spec, "--out", tmp_path / "results", "--workdirs", tmp_path / "runs")
    assert_one_line(result, "aero-study", 2, f"--spec={spec}", expected, "; accepted: a ")


@pytest.mark.parametrize("old, new, expected", [
    ("train=dict(num_steps=4,", "train=dict(num_step=4,",
     ["study tiny: train.num_step names no config field (did you mean train.num_steps?); accepted: ",
      "train.batch_size", "train.num_steps"]),
    ("vocab_size=257, max_len=32)", "vocab_size=257, max_len=32, num_layrs=3)",
     ["study tiny: size.num_layrs names no size field (did you mean size.num_layers?); accepted: size.num_layers, "
      "size.num_heads, size.d_model, size.d_ff, size.vocab_size, size.max_len"]),
    ('"optim.peak_lr": 1e6', '"optim.peak_lrr": 1e6',
     ["run D: override optim.peak_lrr names no config field (did you mean optim.peak_lr?); accepted: ",
      "optim.peak_lr"]),
    ('"optim.peak_lr": 1e6', '"optm.peak_lr": 1e6',
     ["run D: override optm.peak_lr names no config field; accepted: SECTION.FIELD, SECTION one of ", "optim"]),
    ('"optim.peak_lr": 1e6', '"seed": 3', ["run D: override seed is set by the run's seeds; accepted: RunSpec(seeds="]),
    ('"optim.peak_lr": 1e6', '"model.preset": "SM+LN+G"', ["run D: override model.preset is set by the run's preset"]),
    ('"optim.peak_lr": 1e6', '"train.num_steps": 0', ["train.num_steps=0 is invalid"]),  # the run config's own check
], ids=["train", "size", "override field", "override section", "seed", "preset", "override value"])
def test_a_field_the_config_lacks_is_refused_in_one_line_before_anything_runs(corpus, tmp_path, old, new, expected):
    """A misspelt field of a study's train, size or a run's overrides is never added beside the field it meant
    (which would keep its default) nor dropped: the dry run and the real one refuse it, naming the accepted ones."""
    spec = write_spec(tmp_path, corpus)
    assert old in spec.read_text()
    spec.write_text(spec.read_text().replace(old, new))
    args = ["--spec", spec, "--out", tmp_path / "results", "--workdirs", tmp_path / "runs"]
    dry = run_script("aero-study", *args, "--dry-run")
    assert_one_line(dry, "aero-study", 2, *expected)
    if new.startswith("train="):  # the real study refuses it the same way (one case: each command costs seconds)
        real = run_script("aero-study", *args)
        assert (real.returncode, real.stderr) == (dry.returncode, dry.stderr)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()  # nothing trained


@pytest.mark.parametrize("old, new, error", [
    ('OrderClaim("A before B"', 'OrderClam("A before B"', "NameError at line {line}: name 'OrderClam' is not defined"),
    ("DATA = ", "1 / 0\nDATA = ", "ZeroDivisionError at line {line}: division by zero"),  # at the file's top level
    ("DATA = ", "from aero_jax.study import OrderClam\nDATA = ", "ImportError at line {line}: cannot import name"),
], ids=["in get_study", "at load", "import"])
def test_a_spec_that_raises_is_refused_in_one_line_naming_its_file_and_line(corpus, tmp_path, old, new, error):
    spec = write_spec(tmp_path, corpus)
    text = spec.read_text().replace(old, new, 1)
    spec.write_text(text)
    line = next(number for number, content in enumerate(text.splitlines(), start=1) if new.split("\n")[0] in content)
    result = run_script("aero-study", "--spec", spec, "--out", tmp_path / "results", "--dry-run")
    assert_one_line(result, "aero-study", 2, f"--spec={spec} cannot be loaded ({error.format(line=line)}",
                    "; accepted: a study file defining get_study(variant)")


@pytest.mark.parametrize("flag", ["--out", "--workdirs"])
def test_a_dry_run_refuses_the_folders_the_run_refuses_and_creates_nothing(corpus, tmp_path, flag):
    spec = write_spec(tmp_path, corpus)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    folders = {"--out": tmp_path / "results", "--workdirs": tmp_path / "runs", flag: blocker}
    args = ["--spec", spec, *[part for pair in folders.items() for part in pair]]
    dry = run_script("aero-study", *args, "--dry-run")
    assert_one_line(dry, "aero-study", 2, f"cannot write to {blocker} ({blocker} is not a folder)",
                    f"accepted: {flag} naming a writable folder")
    real = run_script("aero-study", *args)
    assert (real.returncode, real.stderr) == (dry.returncode, dry.stderr)
    assert {p.name for p in tmp_path.iterdir()} - {"__pycache__"} == {spec.name, blocker.name}  # nothing made


HELD_CONFIG = """
import os
import time

from aero_jax.cli import load_config_file


def get_config(variant=""):
    if os.path.exists({finished!r}):  # the first run is done: the next run's setup waits here for the SIGINT
        open({holding!r}, "w").close()
        time.sleep(60)
    return load_config_file({config!r})
"""

TWO_SEEDS = """
from aero_jax.study import RunSpec, Study


def get_study(variant=""):
    return Study(name="two_seeds", config={config!r}, runs=(RunSpec("A", "SM+LN+G", seeds=(0, 1), overrides={data!r}),),
                 size=dict(num_layers=1, num_heads=2, d_model=32, d_ff=64, vocab_size=257, max_len=32),
                 train=dict(num_steps=1, checkpoint_every=1))
"""


@pytest.mark.slow  # a study of two runs, interrupted: about 10 s
def test_ctrl_c_while_the_study_sets_up_its_next_run_stops_it_in_one_line(corpus, tmp_path):
    """The study starts as a script's background jobs do, with SIGINT ignored: Ctrl-C must still stop it between
    runs, not only in the trainer's loop."""
    workdirs, holding, stderr = tmp_path / "runs", tmp_path / "holding", tmp_path / "stderr.txt"
    config = tmp_path / "held.py"
    config.write_text(HELD_CONFIG.format(finished=str(workdirs / "a-seed0" / "summary.json"), holding=str(holding),
                                         config=str(ROOT / "configs" / "default.py:smoke")))
    spec = tmp_path / "two_seeds.py"
    spec.write_text(TWO_SEEDS.format(config=str(config), data={f"data.{k}": v for k, v in corpus.items()}))
    ignoring_sigint = ["sh", "-c", 'trap "" INT; exec "$0" "$@"']  # the program inherits the ignored SIGINT
    with stderr.open("wb") as err:
        study = subprocess.Popen([*ignoring_sigint, BIN / "aero-study", "--spec", spec, "--out", tmp_path / "results",
                                  "--workdirs", workdirs], stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while not holding.exists() and study.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert holding.exists(), stderr.read_text()[-3000:]
        before = stderr.stat().st_size  # the first run's lines
        study.send_signal(signal.SIGINT)
        study.wait(timeout=20)
    finally:
        study.kill()
    interrupted = subprocess.CompletedProcess(study.args, study.returncode, "", stderr.read_bytes()[before:].decode())
    assert_one_line(interrupted, "aero-study", 130, "interrupted; the runs trained so far are kept")


def test_the_gpt2_codeparrot_variant_dry_runs(tmp_path):
    result = run_script("aero-study", "--spec", ROOT / "studies" / "paper_claims.py:gpt2_codeparrot", "--dry-run",
                        "--out", tmp_path / "results")
    assert result.returncode == 0, result.stderr
    runs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(runs) == sum(len(r.seeds) for r in study_lib.load_study(
        str(ROOT / "studies" / "paper_claims.py:gpt2_codeparrot")).runs)
    assert {r["dataset"] for r in runs} == {"codeparrot_ds/released"} and {r["batch_size"] for r in runs} == {512}
    assert all("--config.model.num_layers=12" in r["command"] for r in runs)
    study = study_lib.load_study(str(ROOT / "studies" / "paper_claims.py:gpt2_codeparrot"))
    config = study_lib.run_config(study, study.runs[0], 0)
    assert config.model.dtype == "bfloat16" and config.model.ereg_rows == 128  # the config file's own choices


def test_entropy_range_shares_use_the_largest_observed_head_entropy_over_all_heads():
    head = np.array([[2.0, 1.9, 0.2], [1.6, 0.4, 0.5], [0.1, 1.55, 1.0], [0.3, 0.45, 1.2]])  # [L=4, H=3], M = 2.0
    # [3M/4, M] = [1.5, 2.0]: 2.0, 1.9, 1.6, 1.55 of all 12 heads; [0, M/4) = [0, 0.5): 0.2, 0.4, 0.1, 0.3, 0.45.
    assert measures.range_share(head, "top", reference="observed", seq_len=32) == pytest.approx(4 / 12)
    assert measures.range_share(head, "bottom", reference="observed", seq_len=32) == pytest.approx(5 / 12)
    # Against log 32 = 3.47 the same heads sit lower: none reaches 3/4 log T, and the bottom is [0, 0.87).
    assert measures.range_share(head, "top", reference="log_t", seq_len=32) == 0.0
    assert measures.range_share(head, "bottom", reference="log_t", seq_len=32) == pytest.approx(6 / 12)
    assert measures.range_share(head / 10, "top", reference="observed", seq_len=32) == pytest.approx(4 / 12)
    verdict = measures.share_verdict
    assert verdict({"a": 0.5, "b": 0.2, "c": 0.3}, ("a",), ("b", "c")) == (
        "reproduced", "smallest share of a: 50.0%; largest of b, c: 30.0%")
    assert verdict({"a": 0.1, "b": 0.2, "c": 0.3}, ("a",), ("b", "c"))[0] == "not reproduced"
    assert verdict({"a": 0.25, "b": 0.2, "c": 0.3}, ("a",), ("b", "c"))[0] == "inconclusive"
    assert verdict({"a": None, "b": 0.2, "c": 0.3}, ("a",), ("b", "c")) == ("inconclusive", "no evaluation of a")


def test_trend_order_and_gap_verdicts_and_the_pareto_front():
    def trend(*values):
        return measures.trend_verdict(dict(zip("abc", values)), "abc"[:len(values)])[0]

    assert trend(0.1, 0.2, 0.3) == "reproduced"
    assert trend(0.3, 0.2, 0.2) == "not reproduced"
    assert trend(0.1, 0.3, 0.2) == "inconclusive"
    assert trend(1 / 16, 1 / 16, 1 / 16) == "inconclusive"  # one head of 16 everywhere: nothing told apart
    assert trend(0.1, None) == "inconclusive"
    order = measures.order_verdict
    assert order([("a", 2.0, 0.1), ("b", 3.0, 0.1)]) == ("reproduced", "a -> b: +1.000 against noise 0.100")
    assert order([("a", 3.0, 0.1), ("b", 2.0, 0.1)])[0] == "not reproduced"
    assert order([("a", 2.0, 0.5), ("b", 2.2, 0.5)])[0] == "inconclusive"
    # One seed each (spread 0): a gap within 2% of the perplexity is a tie, not a verdict.
    assert order([("a", 2.00, 0.0), ("b", 2.03, 0.0)])[0] == "inconclusive"
    assert order([("a", 2.00, 0.0), ("b", 2.10, 0.0)])[0] == "reproduced"
    assert measures.gap_verdict(("r", 2.0, 0.0), [("v", 2.05, 0.0)], 0.05)[0] == "reproduced"
    assert measures.gap_verdict(("r", 2.0, 0.0), [("v", 2.3, 0.0)], 0.05) == (
        "not reproduced", "v +15.0% (noise 4.3%); limit +5%")
    assert pareto_front([("x", 1, 5), ("y", 2, 4), ("z", 3, 6)]) == ["x", "y"]


def test_a_result_that_is_no_reproduction_is_not_testable_where_the_papers_condition_is_unmet():
    size = dict(num_layers=4, num_heads=4, d_model=32, d_ff=64, vocab_size=257, max_len=32)
    study = study_lib.Study(name="x", config="configs/default.py", size=size, runs=(study_lib.RunSpec("A", "SM"),),
                            train=dict(num_steps=1000))
    config = study_lib.run_config(study, study.runs[0], 0)
    condition = study_lib.Condition(num_layers=12, num_steps=30_000, dtype="float16", heads=144)
    unmet = condition.unmet(config)
    assert unmet == ["L=4 (the papers: L=12)", "16 heads, one head 6.25% of them (the papers: 144)",
                     "1,000 steps (the papers: ~30,000)", "float32 (the papers: float16)"]
    assert study_lib.Condition(num_layers=4, num_steps=1000, heads=16).unmet(config) == []
    for measured in ("not reproduced", "inconclusive"):
        verdict, reason = judged((measured, "why"), unmet)
        assert verdict == "not testable here" and reason.startswith(f"measured {measured}: why; the runs lack")
        assert judged((measured, "why"), []) == (measured, "why")
    verdict, reason = judged(("reproduced", "why"), unmet)  # the effect appeared even without the condition
    assert verdict == "reproduced" and "even without the papers' condition: L=4" in reason
    assert "not testable here" in study_lib.VERDICTS and len(study_lib.VERDICTS) == 4


def test_a_temperature_claim_needs_a_run_with_learnable_temperatures():
    size = dict(num_layers=2, num_heads=2, d_model=32, d_ff=64, vocab_size=257, max_len=32)
    study = study_lib.Study(name="x", config="configs/default.py", size=size, runs=(study_lib.RunSpec("A", "SM+LN+G"),),
                            claims=(study_lib.TemperatureClaim("t", run="A"),))
    with pytest.raises(ConfigError, match="run A .SM.LN.G. has no learnable temperature"):
        study_lib.check_study(study)


@pytest.mark.parametrize("parameterisation", ["log", "raw"])
def test_scaling_every_temperature_raises_every_heads_entropy_at_fixed_weights(parameterisation):
    """The papers' property of SM(t), on a tiny random model whose attention is neither uniform nor one-hot
    (init 0.1, t = 1e-2): t x 2 spreads every head, t x 0.5 sharpens it."""
    config = presets.model_config("SM(t)+ScFuFFN", size="tiny", vocab_size=257, max_len=16, num_layers=2,
                                  num_heads=2, temperature_param=parameterisation, init_std=0.1)
    variables = init_variables(AeroLM(config), jax.random.key(0))
    rows = np.random.default_rng(0).integers(0, 257, (8, 16))
    entropy = {c: evaluate_rows(variables["params"], {k: v for k, v in variables.items() if k != "params"}, rows,
                                model=AeroLM(config.replace(temperature_scale=c)), batch_size=4,
                                max_batches=0)["head_entropy"] for c in (0.5, 1.0, 2.0)}
    rises, falls = measures.rising_heads(entropy)
    assert rises.all() and not falls.any()
    assert measures.intervention_verdict(rises, falls) == ("reproduced", "100% of the heads rise with c, 0% fall")
    rises, falls = measures.rising_heads({0.5: entropy[2.0], 1.0: entropy[1.0], 2.0: entropy[0.5]})
    assert falls.all() and measures.intervention_verdict(rises, falls)[0] == "not reproduced"
    flat = {c: entropy[1.0] for c in entropy}  # heads that do not move (uniform or one-hot at every c)
    assert measures.intervention_verdict(*measures.rising_heads(flat))[0] == "inconclusive"


def test_temperature_scale_multiplies_t_exactly_even_below_the_raw_floor():
    config = presets.model_config("SM(t)+ScFuFFN", size="tiny", vocab_size=257, max_len=4, num_layers=1,
                                  num_heads=2, temperature_param="raw")
    attn = {"temperature": np.array([[1e-2, 5e-5, -1.0, 1e-4], [2.0, 1e-4, 3e-4, 0.5]], np.float32)}
    t = np.asarray(temperatures(attn, config))
    assert t.min() == pytest.approx(1e-4)  # the floor
    for scale in (0.5, 2.0):
        assert np.allclose(temperatures(attn, config.replace(temperature_scale=scale)), scale * t, rtol=1e-6)


def test_temperature_movement_is_the_ratio_to_the_initial_value_per_layer():
    t = np.full((2, 2, 3), 0.01)
    t[1, 0, 0], t[1, 1, 2] = 0.005, 0.04
    movement = measures.temperature_movement(t, 0.01)
    assert movement.tolist() == [[1.0, 1.0, 1.0], [0.5, 1.0, 4.0]]


def test_evaluation_rows_are_a_fixed_random_sample_not_a_prefix():
    rows = np.arange(100)[:, None] * np.ones((1, 4), int)
    sample, described = evaluation_rows(rows, batch_size=10, max_batches=3)
    assert sample.shape == (30, 4) and np.array_equal(sample, evaluation_rows(rows, batch_size=10, max_batches=3)[0])
    assert not np.array_equal(sample[:, 0], np.arange(30)) and np.all(np.diff(sample[:, 0]) > 0)
    assert "random sample of 30 of the 100" in described
    assert np.array_equal(evaluation_rows(rows, batch_size=10, max_batches=0)[0], rows)
    whole, described = evaluation_rows(rows[:95], batch_size=10, max_batches=20)
    assert np.array_equal(whole, rows[:90]) and "whole validation split (90 of 95" in described  # whole batches
