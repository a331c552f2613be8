"""aero-pi-measure's pieces that need no SPU: reading SPU's profile, scaling K blocks to L, refusing a size that
would not fit, finding the SPU environment, the worker importing nothing of aero_jax (tests/pi runs it), and the
command's refusals, reports and Ctrl-C with a stand-in for the SPU worker."""

import ast
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from conftest import BIN, assert_one_line, run_script, small_config

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


def _save(workdir, step, layers, gigabytes, seq_len=128):
    report = {"step": step, "layers_measured": layers, "seq_len": seq_len, "total": {"scaled_bytes": gigabytes * 1e9}}
    path = measure.saved_report_path(str(workdir), step, seq_len, layers, "cheetah")
    pathlib.Path(path).write_text(json.dumps(report))


def test_the_study_page_shows_the_measurement_of_the_step_it_evaluates_with_the_most_blocks(tmp_path):
    from aero_jax.study.page import pi_columns
    from aero_jax.study.spec import load_study

    study = load_study(str(pathlib.Path(__file__).resolve().parents[1] / "studies" / "paper_claims.py"))
    run = study.runs[0]
    measured = lambda step: pi_columns(study, run, str(tmp_path), step)["measured_comm"]  # noqa: E731
    assert measured(1500) is None
    _save(tmp_path, 1500, 1, 0.5)
    _save(tmp_path, 1500, 4, 0.4)
    _save(tmp_path, 1500, 4, 9.0, seq_len=64)  # another length: not the study's
    _save(tmp_path, 500, 4, 7.0)  # an earlier checkpoint, measured after: kept beside, not instead
    (tmp_path / "pi_measured_T128_L12_cheetah.json").write_text(json.dumps(  # named before the step was in the name
        {"step": 200, "layers_measured": 12, "seq_len": 128, "total": {"scaled_bytes": 3e9}}))
    assert measure.saved_measurement(str(tmp_path), 1500, 128)["layers_measured"] == 4
    assert measured(1500) == pytest.approx(0.4)
    assert measured(500) == pytest.approx(7.0)
    assert measured(200) == pytest.approx(3.0)
    assert measured(1000) is None


@pytest.mark.parametrize("memory", ["nan", "inf"])
def test_a_memory_budget_no_size_fits_in_is_refused_in_one_line(tmp_path, memory):
    assert_one_line(run_script("aero-pi-measure", "--workdir", tmp_path, "--memory-gb", memory), "aero-pi-measure", 2,
                    f"--memory-gb {memory} is invalid", "accepted: a positive number")


def test_an_out_that_cannot_be_written_is_refused_before_the_run_is_read(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_script("aero-pi-measure", "--workdir", tmp_path, "--out", blocker / "reports")  # no run: not read
    assert_one_line(result, "aero-pi-measure", 2, f"cannot write to {blocker / 'reports'} ({blocker} is not a folder)",
                    "accepted: --out naming a writable folder")
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


# -- slow: the command on a trained run, with a stand-in for the SPU worker -------------------------

FAKE_WORKER = """
import json, os, sys, time

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))  # --model DIR --layers K --protocol P --result PATH
assert os.path.isfile(os.path.join(args["--model"], "model.safetensors")), "no folded weights"
if os.environ.get("FAKE_PI_STARTED"):  # a measurement in progress, to interrupt
    with open(os.environ["FAKE_PI_STARTED"] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.environ["FAKE_PI_STARTED"] + ".tmp", os.environ["FAKE_PI_STARTED"])
    time.sleep(120)
if os.environ.get("FAKE_PI_BLOCK"):  # the report's place taken while the measurement ran
    os.makedirs(os.environ["FAKE_PI_BLOCK"])
print("@@segment 1/1 h.0.qkv linear")
print("[Profiling] SPU execution h.0.qkv completed, input processing took 1e-05s, execution took 0.5s, total")
print("Link details: total send bytes 1000, recv bytes 2000, send actions 3, recv actions 3")
segment = dict(name="h.0.qkv", kind="linear", site="attention", cpu_s=1.0, wall_s=0.5, peak_rss_mb=100)
settings = dict(protocol="CHEETAH", field="FM64", fxp_fraction_bits=18, weights="owned by party 1")
with open(args["--result"], "w") as f:
    json.dump(dict(segments=[segment], settings=settings, warm_up_s=0.1, private_output=[[0.0, 1.0]],
                   plaintext_output=[[0.0, 1.0]]), f)
"""


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A tiny trained run (checkpoints at steps 4 and 8)."""
    from aero_jax.trainer import train

    workdir = tmp_path_factory.mktemp("run")
    train(small_config(corpus), str(workdir))
    return workdir


@pytest.fixture
def fake_spu(tmp_path):
    """The environment that runs FAKE_WORKER in place of private_forward.py under SPU."""
    worker, python = tmp_path / "fake_worker.py", tmp_path / "python"
    worker.write_text(FAKE_WORKER)
    python.write_text(f'#!/bin/sh\nshift\nexec "{sys.executable}" "{worker}" "$@"\n')  # $1: private_forward.py
    python.chmod(0o755)
    return {**os.environ, measure.PI_PYTHON_ENV: str(python)}


def _measure(workdir, *flags, env):
    return run_script("aero-pi-measure", "--workdir", workdir, "--seq-len", 16, "--layers", 1, *flags, env=env)


@pytest.mark.slow  # a tiny run trained, measured twice: about 40 s
def test_the_measurements_of_two_checkpoints_are_both_kept(trained, fake_spu):
    for step in (8, 4):  # the earlier checkpoint measured last must not replace the later one's report
        result = _measure(trained, "--step", step, env=fake_spu)
        assert result.returncode == 0, result.stderr[-3000:]
        path = measure.saved_report_path(str(trained), step, 16, 1, "cheetah")
        assert result.stdout.splitlines()[-1] == f"written: {path}"
    for step in (8, 4):
        assert measure.saved_measurement(str(trained), step, 16)["step"] == step


@pytest.mark.slow
def test_a_report_that_cannot_be_kept_is_printed(trained, fake_spu, tmp_path):
    out = tmp_path / "reports"
    blocked = measure.saved_report_path(str(out), 8, 16, 1, "cheetah")
    result = _measure(trained, "--out", out, env={**fake_spu, "FAKE_PI_BLOCK": blocked})
    progress, failure = result.stderr.rstrip("\n").rsplit("\n", 1)
    assert all(line.startswith("  1/1 ") for line in progress.splitlines()), result.stderr[-3000:]
    assert_one_line(subprocess.CompletedProcess(result.args, result.returncode, "", failure), "aero-pi-measure", 1,
                    f"cannot write the report {blocked}", "printed above", "--out")
    assert "1 of 2 blocks measured" in result.stdout  # the table, then the whole report
    printed = json.loads(result.stdout.splitlines()[-1])
    assert (printed["step"], printed["seq_len"], printed["layers_measured"]) == (8, 16, 1)


@pytest.mark.slow
def test_ctrl_c_stops_a_measurement_started_with_sigint_ignored(trained, fake_spu, tmp_path):
    """As a script's background job starts it: Ctrl-C must still end the command, and the worker with it."""
    started, stderr, out = tmp_path / "started", tmp_path / "stderr.txt", tmp_path / "reports"
    ignoring_sigint = ["sh", "-c", 'trap "" INT; exec "$0" "$@"']  # the program inherits the ignored SIGINT
    command = [*ignoring_sigint, BIN / "aero-pi-measure", "--workdir", trained, "--seq-len", "16", "--layers", "1",
               "--out", out]
    with stderr.open("wb") as err:
        measuring = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err,
                                     env={**fake_spu, "FAKE_PI_STARTED": str(started)})
    try:
        deadline = time.monotonic() + 300
        while not started.exists() and measuring.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), stderr.read_text()[-3000:]
        before = stderr.stat().st_size
        measuring.send_signal(signal.SIGINT)
        measuring.wait(timeout=20)
    finally:
        measuring.kill()
    interrupted = subprocess.CompletedProcess(command, measuring.returncode, "", stderr.read_bytes()[before:].decode())
    assert_one_line(interrupted, "aero-pi-measure", 130, "interrupted; nothing was written")
    with pytest.raises(ProcessLookupError):
        os.kill(int(started.read_text()), 0)  # the worker ended too
    assert not out.exists()
