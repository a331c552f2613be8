"""aero-study end to end on two tiny runs: interrupted, resumed, reported, and its page checked."""

import json
import pathlib
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import BIN, assert_one_line, run_script

from aero_jax import study as study_lib
from aero_jax.run_log import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]

SPEC = """
from aero_jax.study import (GapClaim, InstabilityClaim, OrderClaim, RunSpec, ShareClaim, Study,
                            SubstituteClaim, TemperatureClaim, TrendClaim)

DATA = {data!r}


def get_study(variant=""):
    runs = (RunSpec("A", "SM+LN+G", seeds=(0, 1), overrides=DATA), RunSpec("B", "{second}", overrides=DATA),
            RunSpec("{third_name}", "SM+R", overrides=DATA),
            RunSpec("D", "SM", overrides=dict(DATA, **{{"optim.peak_lr": 1e6}})),
            RunSpec("E", "SM(t)+ScFuFFN", overrides=DATA))
    claims = (OrderClaim("A before B", ("A", "B")), OrderClaim("B before D", ("B", "D")),
              GapClaim("B near A", "A", ("B",), max_increase=0.5),
              ShareClaim("collapse", "deep_bottom", ("D",), ("B",)), InstabilityClaim("D unstable", "D", "A"),
              SubstituteClaim("substitute", "A", finetune_steps=2, max_increase=10.0),
              TrendClaim("trend", "all_top", ("A", "B", "C")), TemperatureClaim("temperatures", "E"))
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
    assert re.search(r"Verdict: \*\*(reproduced|not reproduced|inconclusive)\*\*", page)
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page):
        path = tmp_path / image
        assert path.exists() and path.stat().st_size > 1000, image
    assert "Tiny runs for a test." in page and "Pareto front" in page and "Headline: B needs" in page
    row_d = next(line for line in page.splitlines() if line.startswith("| D |"))
    assert "diverged (seed 0; step" in row_d and (workdirs / "d-seed0" / "diverged.json").exists()
    b_before_d = page.split("### B before D")[1].split("###")[0]
    assert "Verdict: **reproduced**" in b_before_d  # a diverged run counts as the worst perplexity
    assert "Verdict: **reproduced** (increases: B +" in page.split("### B near A")[1]
    collapse = page.split("### collapse")[1]
    assert "| D | no evaluation |" in collapse and "Verdict: **inconclusive**" in collapse  # D diverged first
    unstable = page.split("### D unstable")[1].split("###")[0]
    assert "| 0 | 1 |" in unstable and "Verdict: **reproduced**" in unstable
    substitute = page.split("### substitute")[1].split("###")[0]
    assert "Verdict: **reproduced**" in substitute and (out / "ln_substitute_a_ft2.json").exists()
    assert re.search(r"Verdict: \*\*\w[\w ]*\*\*", page.split("### trend")[1])
    temperatures = page.split("### temperatures")[1]
    steps = [int(row.split("|")[1]) for row in temperatures.splitlines() if re.match(r"\| \d+ \| \d", row)]
    assert steps == [0, 2, 4]  # the initial value and every kept checkpoint
    assert "| 0 | 0.01 [0.01, 0.01] |" in temperatures and "claim8_temperatures.png" in temperatures  # the init




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


def test_region_shares_against_log_t():
    log_t = np.log(32)
    head = np.array([[0.9, 0.8, 0.1], [0.9, 0.2, 0.2], [0.1, 0.05, 0.6], [0.3, 0.1, 0.9]]) * log_t  # [L=4, H=3]
    assert study_lib.region_share(head, "early_top", 32) == pytest.approx(3 / 6)  # 0.9, 0.8, 0.9 of layers 0-1
    assert study_lib.region_share(head, "deep_bottom", 32) == pytest.approx(3 / 6)  # 0.1, 0.05, 0.1 of layers 2-3
    claim = study_lib.ShareClaim("x", "early_top", ("a",), ("b", "c"))
    assert study_lib.share_verdict({"a": 0.5, "b": 0.2, "c": 0.3}, claim) == "reproduced"
    assert study_lib.share_verdict({"a": 0.1, "b": 0.2, "c": 0.3}, claim) == "not reproduced"
    assert study_lib.share_verdict({"a": 0.25, "b": 0.2, "c": 0.3}, claim) == "inconclusive"
    assert study_lib.share_verdict({"a": None, "b": 0.2, "c": 0.3}, claim) == "inconclusive"


def test_trend_verdicts():
    assert study_lib.trend_verdict([0.1, 0.2, 0.3]) == "reproduced"
    assert study_lib.trend_verdict([0.3, 0.2, 0.2]) == "not reproduced"
    assert study_lib.trend_verdict([0.1, 0.3, 0.2]) == "inconclusive"
    assert study_lib.trend_verdict([0.1, None]) == "inconclusive"
    log_t = np.log(32)
    assert study_lib.region_share(np.array([[0.9, 0.1], [0.8, 0.2]]) * log_t, "all_top", 32) == pytest.approx(0.5)


def test_verdicts_and_the_pareto_front():
    assert study_lib.verdict([("a", 2.0, 0.1), ("b", 3.0, 0.1)]) == "reproduced"
    assert study_lib.verdict([("a", 3.0, 0.1), ("b", 2.0, 0.1)]) == "not reproduced"
    assert study_lib.verdict([("a", 2.0, 0.5), ("b", 2.2, 0.5)]) == "inconclusive"
    assert study_lib.pareto_front([("x", 1, 5), ("y", 2, 4), ("z", 3, 6)]) == ["x", "y"]


def test_a_temperature_claim_needs_a_run_with_learnable_temperatures():
    size = dict(num_layers=2, num_heads=2, d_model=32, d_ff=64, vocab_size=257, max_len=32)
    study = study_lib.Study(name="x", config="configs/default.py", size=size, runs=(study_lib.RunSpec("A", "SM+LN+G"),),
                            claims=(study_lib.TemperatureClaim("t", "A"),))
    with pytest.raises(study_lib.ConfigError, match="run A .SM.LN.G. has no learnable temperature"):
        study_lib.check_study(study)


def test_temperature_entropy_correlation_reads_mean_log_t_per_head():
    t = np.exp(np.arange(6.0).reshape(2, 3, 1) * np.ones((1, 1, 4)))  # mean log t of head (l, h) = 3l + h
    rho, _ = study_lib.temperature_entropy_correlation(t, np.arange(6.0).reshape(2, 3))
    assert rho == pytest.approx(1.0)
    rho, _ = study_lib.temperature_entropy_correlation(t, -np.arange(6.0).reshape(2, 3))
    assert rho == pytest.approx(-1.0)
