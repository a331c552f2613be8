"""aero-report on tiny trained runs: table, figures and their values, and bad input."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from aero_jax import figures, reports
from aero_jax.config import ConfigError
from aero_jax.run_config import base_config, model_section
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
    assert "LN: 4 x R^{32x32}" in table[3] and "LN" not in table[2].split("|")[3]


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
