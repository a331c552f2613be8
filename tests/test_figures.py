"""The figures draw the values they are given: one heatmap colour scale, ours beside the papers', labels that
never overlap, head entropy against the temperature scale."""

import numpy as np
from matplotlib.text import Text

from aero_jax import figures

figures.files_only()


def _label_boxes(fig):
    """Window extents of the labels' text alone (a leader line is not part of a label's box)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in fig.axes[0].texts]


def test_heatmaps_share_one_colour_scale_the_joint_min_and_max():
    low = np.array([[0.1, 0.4], [0.3, 0.2]])
    high = np.array([[2.0, 5.5], [3.0, 1.0]])
    fig = figures.heatmaps({"low": low, "high": high}, title="Entropy", value_label="nats")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2
    assert [image.get_clim() for image in images] == [(0.1, 5.5), (0.1, 5.5)]
    assert fig.get_suptitle() == "Entropy\n(one colour scale for every panel: 0.10 to 5.50 nats)"
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.10", "0.40", "0.30", "0.20"]


def test_heatmaps_keep_given_colour_limits():
    fig = figures.heatmaps({"a": np.array([[0.2, 0.8]])}, title="t", value_label="v", vmin=0.0, vmax=1.0)
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)
    assert "0.00 to 1.00 v" in fig.get_suptitle()


def test_versus_paper_bars_are_the_values_and_a_label_without_a_paper_value_has_fewer_bars():
    ours = {"SM+LN": 2.5, "SM": 3.25, "SM+ScFFN": 4.0}
    paper = {"SM+LN": 2.4, "SM": None}
    extra = {"SM+LN": 1.5, "SM": 1.75, "SM+ScFFN": 2.0}
    fig = figures.versus_paper(ours, paper, title="t", value_label="v", ours_extra=extra, extra_label="M = log T")
    ax = fig.axes[0]
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == sorted([2.5, 3.25, 4.0, 1.5, 1.75, 2.0, 2.4])
    bars_per_label = [sum(abs(p.get_x() + p.get_width() / 2 - x) < 0.45 for p in ax.patches) for x in range(3)]
    assert bars_per_label == [3, 2, 2]
    texts = [t.get_text() for t in ax.texts]
    assert {"2.5", "3.25", "4", "1.5", "1.75", "2", "2.4"} <= set(texts)
    assert texts.count("no published value") == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["this study", "M = log T", "the papers"]


def test_versus_paper_without_an_extra_series_draws_two_bars_per_published_label():
    fig = figures.versus_paper({"a": 1.0, "b": 2.0}, {"a": 1.1, "b": 2.2}, title="t", value_label="v")
    assert sorted(p.get_height() for p in fig.axes[0].patches) == [1.0, 1.1, 2.0, 2.2]


def test_trade_off_labels_do_not_overlap_even_at_identical_points():
    points = [("SM", 1.0, 20.0), ("SM+ScFFN", 1.0, 20.0), ("SM+ScFuFFN", 1.0, 20.0), ("SM+LN+G", 3.0, 18.0),
              ("SM+LN", 2.9, 18.1), ("SM(t)+ScFuFFN", 1.05, 20.05), ("EReg(SM(t)+ScFuFFN)", 1.1, 19.9),
              ("LN+G", 5.0, 17.0)]
    fig = figures.trade_off(points, ["LN+G", "SM+LN", "SM"], x_label="GB")
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(name for name, _, _ in points)
    boxes = _label_boxes(fig)
    overlapping = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    assert not overlapping
    markers = fig.axes[0].transData.transform([(x, y) for _, x, y in points])
    assert not [(box, m) for box in boxes for m in markers if box.contains(*m)]  # no label hides a point
    assert sum(t.arrow_patch is not None for t in fig.axes[0].texts) >= 2  # moved labels point at their points


def test_trade_off_places_25_labels_without_overlap_and_the_same_way_twice():
    rng = np.random.default_rng(0)
    points = [(f"run {i}", float(x), float(y)) for i, (x, y) in enumerate(rng.uniform([1, 17], [3, 19], (22, 2)))]
    points += [("twin a", 2.0, 18.0), ("twin b", 2.0, 18.0), ("twin c", 2.0, 18.0)]
    first, second = (figures.trade_off(points, [], x_label="GB") for _ in range(2))
    boxes = _label_boxes(first)
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    assert [b.bounds for b in boxes] == [b.bounds for b in _label_boxes(second)]


def test_intervention_plots_each_heads_entropy_in_order_of_c():
    rng = np.random.default_rng(1)
    entropy = {c: rng.uniform(0, 4, (2, 3)) for c in (2.0, 0.5, 1.0)}
    fig = figures.intervention(entropy, title="t")
    assert len(fig.axes) == 2
    for layer, ax in enumerate(fig.axes):
        assert len(ax.lines) == 3
        for head, line in enumerate(ax.lines):
            np.testing.assert_array_equal(line.get_xdata(), [0.5, 1.0, 2.0])
            np.testing.assert_array_equal(line.get_ydata(), [entropy[c][layer, head] for c in (0.5, 1.0, 2.0)])
        assert ax.get_xscale() == "log"


def test_intervention_puts_more_than_six_layers_on_a_grid():
    fig = figures.intervention({c: np.ones((8, 2)) * c for c in (0.5, 1.0)}, title="t")
    assert len(fig.axes) == 8
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes}
    columns = {round(ax.get_position().x0, 3) for ax in fig.axes}
    assert len(rows) == 2 and len(columns) == 6
