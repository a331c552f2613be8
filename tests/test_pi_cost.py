"""The PI cost model: the published rows, the papers' counts and FLOPs, traced counts, the command."""

import json
import subprocess
import sys

import jax
import pytest

from aero_jax import presets
from aero_jax.model import AeroLM, init_variables
from aero_jax.pi import cost, fit
from aero_jax.pi.cost import nonlinear_ops, pi_cost, workload
from aero_jax.pi.trace import traced_nonlinear_elements


def test_every_published_row_is_reproduced():
    errors = fit.fit_errors(fit.calibration_rows(), cost.load_coefficients())
    for e in errors:
        print(f"{e['arch']:<40} T={e['seq_len']}: comm {e['comm_gb_error']:+.1%}, latency {e['latency_min_error']:+.1%}")
    assert len(errors) == 35
    assert {(e["num_layers"], e["seq_len"]) for e in errors} == {(12, 128), (12, 256), (18, 128), (12, 512)}
    assert max(abs(e["comm_gb_error"]) for e in errors) <= 0.05
    assert max(abs(e["latency_min_error"]) for e in errors) <= 0.10


def test_every_row_is_predicted_when_held_out():
    held_out = fit.leave_one_out_errors(fit.calibration_rows())
    assert max(abs(e["comm_gb_error"]) for e in held_out) <= 0.05
    assert max(abs(e["latency_min_error"]) for e in held_out) <= 0.10
    stored = cost.load_coefficients()["leave_one_out_errors"]
    assert [(e["comm_gb_error"], e["latency_min_error"]) for e in held_out] == \
        [(e["comm_gb_error"], e["latency_min_error"]) for e in stored]


def test_the_stored_coefficients_are_what_the_fit_gives():
    refit = fit.fit(fit.calibration_rows())
    stored = cost.load_coefficients()
    for target in ("comm_gb", "latency_min"):
        assert refit[target] == pytest.approx(stored[target], rel=1e-6, abs=1e-15)


def test_latency_grows_with_depth_through_round_trips():
    shallow, deep = (workload(presets.model_config("SM+ScFuFFN", num_layers=L, max_len=128)) for L in (12, 24))
    coefficients = cost.load_coefficients()["latency_min"]
    assert coefficients["matmul_round_trips"] > 0
    rounds = [w.features()["matmul_round_trips"] / cost.ROUND_TRIP_MIN for w in (shallow, deep)]
    assert rounds[1] - rounds[0] == pytest.approx(12 * (4 + 2 + 1))  # projections, T x T products, fused FFN


@pytest.mark.parametrize("name, notation, ffn_b, attn_b", [
    ("SM+LN+G", "SM: 144 x R^{128x128}, LN: 24 x R^{128x768}, G: 12 x R^{128x3072}", 14.5, 7.7),
    ("SM+LN+R", "SM: 144 x R^{128x128}, LN: 24 x R^{128x768}, R: 12 x R^{128x3072}", 14.5, 7.7),
    ("SM+ScFFN", "SM: 144 x R^{128x128}", 14.5, 7.7),
    ("SM+ScFuFFN", "SM: 144 x R^{128x128}", 1.8, 7.7),
    ("SM+ScFuFFN[FFN:L/2]", "SM: 144 x R^{128x128}", 0.9, 7.7),
    ("EReg(SM(t)+ScFuFFN)", "SM: 144 x R^{128x128}", 1.8, 7.7),
])
def test_gpt2_small_counts_and_flops_match_the_papers(name, notation, ffn_b, attn_b):
    w = workload(presets.model_config(name, max_len=128))
    assert w.notation() == notation
    assert w.ffn_flops / 1e9 == pytest.approx(ffn_b, rel=0.05)
    assert w.attn_flops / 1e9 == pytest.approx(attn_b, rel=0.05)
    assert workload(presets.model_config(name, max_len=256)).attn_flops / 1e9 == pytest.approx(16.3, rel=0.05)


@pytest.mark.parametrize("name", presets.names())
def test_traced_graph_counts_agree_with_the_config(name):
    config = presets.model_config(name, size="tiny", num_layers=4, max_len=16, sow_entropy=False,
                                  entropy_reg=False)
    model = AeroLM(config)
    traced = traced_nonlinear_elements(model, init_variables(model, jax.random.key(0)), 16)
    expected = {op: count * rows * cols for op, (count, rows, cols) in nonlinear_ops(config, 16).items()}
    if "LN" in expected or config.ln_final:  # rsqrt runs once per row; the final LayerNorm is traced too
        expected["LN"] = expected.get("LN", 0) // config.d_model + 16 * int(config.ln_final)
    assert traced == expected


def test_savings_against_the_baseline_of_the_same_size():
    report = pi_cost(presets.model_config("SM+ScFuFFN", num_layers=18, max_len=256), name="SM+ScFuFFN")
    baseline = pi_cost(presets.model_config("SM+LN+G", num_layers=18, max_len=256), name="SM+LN+G")
    assert report["baseline"]["comm_gb"] == pytest.approx(baseline["comm_gb"])
    assert report["comm_saving"] == pytest.approx(baseline["comm_gb"] / report["comm_gb"])
    assert report["comm_saving"] > 2 and report["latency_saving"] > 1


def _command(*args):
    return subprocess.run([sys.executable, "-m", "aero_jax.pi.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_command_json_and_paper_table():
    result = _command("--preset", "ereg_sm_t_scfuffn", "--layers", "6", "--ffn-layers", "3", "--seq-len", "256",
                      "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("comm_gb", "latency_min", "ffn_flops", "attn_flops", "nonlinear_ops", "comm_saving",
                "latency_saving"):
        assert key in report
    assert report["num_layers"] == 6 and report["seq_len"] == 256
    table = _command("--paper-table")
    assert table.returncode == 0 and table.stdout.count("\n") == 37


def test_unknown_architecture_is_one_clear_error():
    result = _command("--preset", "SM+Swish")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "unknown preset 'SM+Swish'" in result.stderr
