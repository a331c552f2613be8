"""aero-report on tiny trained runs: table, figures and their values, and bad input."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from conftest import assert_one_line, run_script
from PIL import Image

from aero_jax import figures, reports
from aero_jax.config import ConfigError
from aero_jax.evaluate import load_run_config
from aero_jax.run_config import base_config, model_section
from aero_jax.run_log import RunLog, read_metrics
from aero_jax.trainer import Trainer


def _train(corpus, workdir, preset, **size):
    c = base_config()
    c.model = model_section(preset, size="tiny", vocab_size=257, max_len=32, **size)
    c.data.update(corpus)
    c.train.update(num_steps=4, batch_size=4, log_every=2, eval_every=4, eval_batch_size=4, eval_batches=2,
                   checkpoint_every=4)
    Trainer(c, str(workdir)).run()
    return str(workdir)


@pytest.fixture(scope="module")
def two_runs(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    return [_train(corpus, tmp / "ereg", "EReg(SM(t)+ScFuFFN)"), _train(corpus, tmp / "base", "SM+LN+G")]


def test_report_writes_the_table_and_every_figure(two_runs, tmp_path):
    written = reports.report(two_runs, str(tmp_path / "out"))
    assert set(written) == {"table.md", "table.csv", "head_entropy", "entropy_ranges", "layer_entropy", "nonfinite",
                            "thresholds", "temperatures"}
    for path in written.values():
        assert os.path.getsize(path) > 0
    for name in ("head_entropy", "entropy_ranges", "layer_entropy", "nonfinite", "thresholds", "temperatures"):
        width, height = Image.open(written[name]).size
        assert width > 300 and height > 200
    table = open(written["table.md"]).read().splitlines()
    assert len(table) == 4 and "EReg(SM(t)+ScFuFFN)" in table[2] and "SM+LN+G" in table[3]
    ops = [c.strip() for c in table[0].split("|")].index("nonlinear ops")
    assert "LN: 4 x R^{32x32}" in table[3] and "LN" not in table[2].split("|")[ops]


def test_heatmap_values_are_the_runs_head_entropy_matrix(two_runs):
    run = reports.load_run(two_runs[0])
    saved = np.load(os.path.join(two_runs[0], "eval", "head_entropy_step4.npy"))
    np.testing.assert_array_equal(run.head_entropy, saved)
    fig = figures.heatmaps({run.label: run.head_entropy}, title="t", value_label="v")
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (run.model_config.num_layers, run.model_config.num_heads)
    np.testing.assert_allclose(np.asarray(image), saved)
    cells = [t.get_text() for t in fig.axes[0].texts]
    assert cells == [f"{v:.2f}" for v in saved.reshape(-1)]


def test_a_workdir_without_metrics_or_checkpoint_is_refused(two_runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(open(os.path.join(two_runs[0], "config.json")).read())
    with pytest.raises(ConfigError, match="has no metrics.jsonl"):
        reports.load_run(str(empty))
    (empty / "metrics.jsonl").write_text(json.dumps({"step": 1, "kind": "train", "loss": 1.0}) + "\n")
    with pytest.raises(ConfigError, match="has no checkpoint"):
        reports.load_run(str(empty))


def test_runs_of_mixed_sizes_are_refused(corpus, two_runs, tmp_path):
    bigger = _train(corpus, tmp_path / "bigger", "SM+LN+G", num_layers=3)
    with pytest.raises(ConfigError, match="runs of different sizes cannot share one comparison"):
        reports.report([two_runs[0], bigger], str(tmp_path / "out"))


def _table(out):
    with open(os.path.join(out, "table.csv")) as f:
        return list(csv.DictReader(f))


def _evaluations(workdir):
    return {r["step"]: r["perplexity"] for r in read_metrics(workdir) if r["kind"] == "eval"}


def test_each_row_shows_its_figures_step_and_they_come_from_one_step(two_runs, tmp_path):
    """A run evaluated after its last kept checkpoint (killed before it saved): its row is the checkpoint's step,
    with that step's perplexity and head entropy beside that checkpoint's thresholds, never the newer evaluation."""
    later = tmp_path / "later"
    shutil.copytree(two_runs[0], later)
    step4 = _evaluations(later)[4]
    with open(later / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 6, "kind": "eval", "loss": 0.5, "perplexity": 1.5}) + "\n")
    entropy4 = np.load(later / "eval" / "head_entropy_step4.npy")
    np.save(later / "eval" / "head_entropy_step6.npy", np.zeros_like(entropy4))
    result = run_script("aero-report", later, two_runs[1], "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    rows = _table(tmp_path / "out")
    assert [row["step"] for row in rows] == ["4", "4"]
    assert float(rows[0]["eval perplexity"]) == round(step4, 3) != 1.5
    assert float(rows[1]["eval perplexity"]) == round(_evaluations(two_runs[1])[4], 3)
    header = open(tmp_path / "out" / "table.md").readline()
    assert header.startswith("| architecture | step | eval perplexity |")
    run = reports.load_run(str(later))
    assert (run.step, run.eval_step) == (4, 4)
    np.testing.assert_array_equal(run.head_entropy, entropy4)


def test_a_row_whose_checkpoint_was_not_evaluated_names_both_steps(two_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    os.rename(run / "eval" / "head_entropy_step4.npy", run / "eval" / "head_entropy_step2.npy")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    evaluation = next(json.loads(line) for line in lines if json.loads(line)["kind"] == "eval")
    lines = [line for line in lines if json.loads(line)["kind"] != "eval"] + [json.dumps(dict(evaluation, step=2))]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    reports.report([str(run)], str(tmp_path / "out"))
    row = _table(tmp_path / "out")[0]
    assert row["step"] == "checkpoint 4, evaluation 2"
    assert float(row["eval perplexity"]) == round(evaluation["perplexity"], 3)


def _damaged_copy(workdir, tmp_path, edit):
    copy = tmp_path / "damaged"
    shutil.copytree(workdir, copy)
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    (copy / "metrics.jsonl").write_text(edit(lines))
    return copy


@pytest.mark.parametrize("damage, why", [
    (lambda line: line[: len(line) // 2], "not JSON: "),
    (lambda line: "[1, 2]", "not a record with a step and a kind"),
], ids=["cut", "no record"])
def test_a_damaged_line_inside_metrics_is_refused_naming_the_file_and_line(two_runs, tmp_path, damage, why):
    """aero-report, the study's readers (read_metrics) and a resumed trainer (RunLog) refuse it alike."""
    run = _damaged_copy(two_runs[0], tmp_path, lambda lines: "\n".join(
        [lines[0], damage(lines[1]), *lines[2:]]) + "\n")
    path = run / "metrics.jsonl"
    result = run_script("aero-report", run, "--out", tmp_path / "out")
    assert_one_line(result, "aero-report", 2, f"{path} is damaged at line 2 ({why}",
                    "accepted: one JSON record a line", "remove or repair line 2")
    for read in (read_metrics, lambda w: RunLog(str(w))):
        with pytest.raises(ConfigError, match=f"{path} is damaged at line 2"):
            read(run)


def test_a_cut_short_last_line_is_skipped_with_one_warning_by_every_reader(two_runs, tmp_path, capsys):
    """What a run killed while writing its metrics leaves: aero-report reports the rest, warning once, and a
    resumed trainer drops the line, as it drops every record past its checkpoint."""
    run = _damaged_copy(two_runs[0], tmp_path, lambda lines: "\n".join(lines) + '\n{"step": 5, "kind": "tr')
    path = run / "metrics.jsonl"
    number = len(path.read_text().splitlines())
    result = run_script("aero-report", run, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [f"{path} line {number} is cut short (a run stopped while writing "
                                                  f"it); skipped it"]
    assert _table(tmp_path / "out")[0]["step"] == "4"
    intact = read_metrics(two_runs[0])
    assert read_metrics(run) == intact
    config = load_run_config(str(run))
    summary = Trainer(config, str(run)).run()  # finished: resumes at step 4 and trains nothing
    assert summary["step"] == 4 and read_metrics(run) == intact
    assert path.read_text().endswith("}\n")  # the cut line is gone from the file
