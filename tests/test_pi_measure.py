"""aero-pi-measure's pieces that need no SPU: reading SPU's profile, scaling K blocks to L, refusing a size that
would not fit, finding the SPU environment, and the worker importing nothing of aero_jax (tests/pi runs it)."""

import ast
import json
import pathlib

import pytest

from aero_jax import presets
from aero_jax.config import ConfigError
from aero_jax.pi import measure

# Party 0's log of two programs, as spu 0.9.5 prints it (one program's op lines cut).
PROFILE = """\
@@segment 1/2 h.0.qkv linear
[2026-12-01 21:32:10.034] [info] [api.cc:172] [Profiling] SPU execution h.0.qkv completed, input processing took \
1.7076e-05s, execution took 0.635940696s, output processing took 7.51e-07s, total time 0.635958523s.
[2026-12-01 21:32:10.034] [info] [api.cc:220] HLO profiling: total time 0.633623972
[2026-12-01 21:32:10.034] [info] [api.cc:223] - pphlo.dot, executed 1 times, duration 0.633623972s, send bytes \
10371078 recv bytes 10438821, send actions 933, recv actions 933
[2026-12-01 21:32:10.034] [info] [api.cc:233] Link details: total send bytes 10371078, recv bytes 10438821, send \
actions 933, recv actions 933
@@segment 2/2 h.0.softmax softmax
[2026-12-01 21:32:12.548] [info] [cheetah_mul.cc:335] CheetahMul uses 4 modulus for 64 bit input over 64 bit ring
[2026-12-01 21:32:13.669] [info] [api.cc:172] [Profiling] SPU execution h.0.softmax completed, input processing \
took 6.389e-06s, execution took 0.500860898s, output processing took 2.193e-06s, total time 0.50086948s.
[2026-12-01 21:32:13.669] [info] [api.cc:233] Link details: total send bytes 5433032, recv bytes 6672695, send \
actions 230, recv actions 230
"""


def test_the_profile_gives_each_program_its_traffic():
    traffic = measure.parse_profile(PROFILE.splitlines())
    assert traffic == {
        "h.0.qkv": measure.LinkTraffic(10371078 + 10438821, 933 + 933, 0.635940696),
        "h.0.softmax": measure.LinkTraffic(5433032 + 6672695, 230 + 230, 0.500860898)}


def test_kinds_sum_their_programs_and_scale_by_site():
    segments = [dict(name="h.0.qkv", kind="linear", site="attention", cpu_s=1.0, wall_s=0.5, peak_rss_mb=1),
                dict(name="h.0.softmax", kind="softmax", site="attention", cpu_s=2.0, wall_s=1.0, peak_rss_mb=1)]
    totals = measure.kind_totals(segments, measure.parse_profile(PROFILE.splitlines()),
                                 {"attention": 3.0, "ffn": 1.0, "model": 1.0})
    assert list(totals) == ["linear", "softmax"]
    assert totals["softmax"]["bytes"] == 5433032 + 6672695
    assert totals["softmax"]["scaled_bytes"] == 3 * totals["softmax"]["bytes"]
    assert totals["linear"]["scaled_cpu_s"] == 3.0


def test_k_blocks_scale_to_the_model_by_what_they_hold():
    c = presets.model_config("SM+ScFuFFN[FFN:L/2]", num_layers=12)  # FFNs in the first 6 blocks
    assert measure.block_scales(c, 1) == {"attention": 12.0, "ffn": 6.0, "model": 1.0}
    assert measure.block_scales(c, 12) == {"attention": 1.0, "ffn": 1.0, "model": 1.0}
    no_ffn = c.replace(ffn_layers=(10, 11))
    with pytest.raises(ConfigError, match="accepted: --layers covering an FFN layer"):
        measure.block_scales(no_ffn, 2)


def test_a_size_that_would_not_fit_is_refused_with_one_that_does():
    c = presets.model_config("SM+LN+G", num_layers=12, max_len=1024)
    measure.check_fits(c, 128, available_gb=24.0)
    with pytest.raises(ConfigError) as refused:
        measure.check_fits(c, 1024, available_gb=24.0)
    message = str(refused.value)
    assert "--seq-len 1024 needs about" in message and "accepted: --seq-len" in message
    fitting = int(message.split("accepted: --seq-len ")[1].split()[0])
    assert measure.peak_memory_gb(c, fitting) <= measure.MEMORY_HEADROOM * 24.0 < measure.peak_memory_gb(c, fitting + 1)


def test_a_missing_spu_environment_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv(measure.PI_PYTHON_ENV, str(tmp_path / "nothing" / "python"))
    with pytest.raises(ConfigError, match="make pi-env"):
        measure.pi_python()


def test_the_worker_imports_only_its_own_environment():
    """private_forward.py runs in .venv-pi (spu, jax 0.4.34, numpy, safetensors): nothing of aero_jax."""
    tree = ast.parse(pathlib.Path(measure.WORKER).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module and node.level == 0}
    third_party = imported - set(__import__("sys").stdlib_module_names) - {"__future__"}
    assert third_party == {"jax", "numpy", "safetensors", "spu"}


def _save(workdir, layers, gigabytes, seq_len=128):
    report = {"layers_measured": layers, "seq_len": seq_len, "total": {"scaled_bytes": gigabytes * 1e9}}
    pathlib.Path(measure.saved_report_path(str(workdir), seq_len, layers, "cheetah")).write_text(json.dumps(report))


def test_the_study_page_shows_the_measurement_of_the_most_blocks(tmp_path):
    from aero_jax.study.page import pi_columns
    from aero_jax.study.spec import load_study

    study = load_study(str(pathlib.Path(__file__).resolve().parents[1] / "studies" / "paper_claims.py"))
    run = study.runs[0]
    assert pi_columns(study, run, str(tmp_path))["measured_comm"] is None
    _save(tmp_path, 1, 0.5)
    _save(tmp_path, 4, 0.4)
    _save(tmp_path, 4, 9.0, seq_len=64)  # another length: not the study's
    assert measure.saved_measurement(str(tmp_path), 128)["layers_measured"] == 4
    assert pi_columns(study, run, str(tmp_path))["measured_comm"] == pytest.approx(0.4)
