"""aero-pi-measure under SecretFlow SPU (`make test-pi`: builds .venv-pi, then runs these): a tiny model's forward
pass under 2PC, its bytes per kind of operation, its logits against plaintext, and the command's refusals."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import assert_one_line, run_script, small_config

if not os.environ.get("AERO_PI_TESTS"):
    pytest.skip("run by `make test-pi`, which builds .venv-pi with SecretFlow SPU", allow_module_level=True)

from aero_jax import presets  # noqa: E402
from aero_jax.model import AeroLM, init_variables, split_variables  # noqa: E402
from aero_jax.pi import measure  # noqa: E402

TINY = dict(size="tiny", vocab_size=257, max_len=16)
T = 16
# Fixed point with 18 fraction bits and SPU's approximations of exp, division and rsqrt: logits within this of
# the same functions in float32.
LOGIT_TOLERANCE = 0.05


def _random_model(name: str):
    c = presets.model_config(name, **TINY)
    params, state = split_variables(init_variables(AeroLM(c), jax.random.key(0)))
    return c, params, state


def _tokens():
    return np.random.default_rng(0).integers(0, 257, T)


@pytest.fixture(scope="module")
def measured():
    """The measured forward of three tiny random models: {preset: report}."""
    reports = {}
    for name in ("SM+LN+G", "SM+LN+R", "SM+ScFuFFN"):
        c, params, state = _random_model(name)
        reports[name] = measure.measure_model(c, name, params, state, _tokens(), layers=c.num_layers)
    return reports


def test_bytes_are_reported_per_kind_and_follow_the_nonlinearities(measured):
    g, r, softmax_only = (measured[name] for name in ("SM+LN+G", "SM+LN+R", "SM+ScFuFFN"))
    assert set(g["kinds"]) == {"embedding", "LayerNorm", "linear", "softmax", "GELU", "LM head", "rest"}
    assert set(r["kinds"]) == {"embedding", "LayerNorm", "linear", "softmax", "ReLU", "LM head", "rest"}
    assert set(softmax_only["kinds"]) == {"embedding", "linear", "softmax", "LM head", "rest"}
    for report in measured.values():
        for kind in ("embedding", "linear", "softmax", "LM head"):
            assert report["kinds"][kind]["bytes"] > 0 and report["kinds"][kind]["messages"] > 0
        assert report["total"]["bytes"] == pytest.approx(sum(row["bytes"] for row in report["kinds"].values()))
    assert g["kinds"]["GELU"]["bytes"] > 5 * r["kinds"]["ReLU"]["bytes"]
    assert g["total"]["bytes"] > r["total"]["bytes"] > softmax_only["total"]["bytes"]


def test_private_logits_are_the_plaintext_logits_of_the_model(tmp_path):
    """The private forward computes the model: its plaintext twin equals AeroLM's logits, and the revealed logits
    are within the stated tolerance of them."""
    c, params, state = _random_model("EReg(SM(t)+ScFuFFN)")
    tokens = _tokens()
    measure.write_model(c, params, state, tokens, str(tmp_path))
    result, traffic = measure.run_worker(str(tmp_path), layers=c.num_layers, protocol="cheetah",
                                         python=measure.pi_python())
    expected = AeroLM(c).apply({"params": params, **state}, tokens[None])[0]
    plain, private = np.asarray(result["plaintext_output"]), np.asarray(result["private_output"])
    np.testing.assert_allclose(plain, np.asarray(expected), atol=1e-4)
    assert np.max(np.abs(private - plain)) < LOGIT_TOLERANCE
    assert set(traffic) == {segment["name"] for segment in result["segments"]} | {"warm_up"}
    assert result["settings"]["fxp_fraction_bits"] == 18 and result["settings"]["field"] == "FM64"


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    from aero_jax.trainer import train

    workdir = tmp_path_factory.mktemp("ereg")
    train(small_config(corpus), str(workdir))  # EReg(SM(t)+ScFuFFN), L=2, d=32, max_len=32
    return str(workdir)


def test_the_command_measures_k_blocks_and_scales_them(trained):
    result = run_script("aero-pi-measure", "--workdir", trained, "--seq-len", T, "--layers", 1, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["layers_measured"] == 1 and report["num_layers"] == 2 and report["seq_len"] == T
    kinds = report["kinds"]
    assert kinds["softmax"]["scaled_bytes"] == pytest.approx(2 * kinds["softmax"]["bytes"])  # one block of two
    assert kinds["embedding"]["scaled_bytes"] == pytest.approx(kinds["embedding"]["bytes"])  # once per forward
    assert report["model"]["comm_gb"] > 0 and report["model"]["ratio_comm"] > 0
    assert report["wan_estimate"]["latency_min"] > 0
    assert report["logits"]["max_abs_error"] < LOGIT_TOLERANCE
    assert "1/" in result.stderr and "softmax" in result.stderr  # progress, one line per program
    saved = json.loads(open(measure.saved_report_path(trained, report["step"], T, 1, "cheetah")).read())  # the page's
    assert saved["total"] == report["total"]


@pytest.mark.parametrize("flags, expected", [
    (["--protocol", "aby3"], "accepted: cheetah, semi2k"),
    (["--seq-len", 33], "accepted: 1..32"),
    (["--layers", 3], "accepted: 1..2"),
    (["--memory-gb", 0], "accepted: a positive number"),
    (["--memory-gb", 1.0], "accepted: a machine with more memory"),
])
def test_bad_requests_are_refused_in_one_line(trained, flags, expected):
    assert_one_line(run_script("aero-pi-measure", "--workdir", trained, *flags), "aero-pi-measure", 2, expected)
