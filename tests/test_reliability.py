"""Failures as a hostile user meets them: every case here once lost a run or mislabelled a result.

Fast cases run by default; the ones that train in subprocesses, kill them or drop privileges
are marked slow (`make test-slow`).
"""

import ctypes
import errno
import json
import os
import pathlib
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from aero_jax import workdir as workdir_module
from aero_jax.checkpoint import Checkpointer, CorruptCheckpoint, fingerprints, short_reason
from aero_jax.config import ConfigError
from aero_jax.data import cache
from aero_jax.data.stdlib import prepare_stdlib
from aero_jax.errors import classify
from aero_jax.evaluate import restore_run
from aero_jax import export as export_module
from aero_jax.export import to_pytorch
from aero_jax.run_config import architecture_label, base_config, model_section, validate
from aero_jax.run_log import read_metrics
from aero_jax.trainer import Trainer
from conftest import BIN, assert_one_line, dead_writer, run_script, small_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = f"--config={ROOT / 'configs' / 'default.py'}:smoke"
PR_CAPBSET_DROP = 24


def data_flags(corpus):
    return [f"--config.data.{k}={v}" for k, v in corpus.items()]


def train_losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["kind"] == "train"}


# -- 1. rollback that backs off --------------------------------------------------------------------

def test_rollback_retries_compound_and_recover_on_the_second(corpus, tmp_path):
    config = small_config(corpus)
    config.recovery.update(policy="rollback", max_recoveries=3)
    trainer = Trainer(config, str(tmp_path / "run"))
    original = trainer.step_fn

    def diverges_until_the_rate_is_quartered(state, batch):
        step, lr_scale = int(state.step), float(state.lr_scale)  # read before the step donates the state
        new_state, metrics = original(state, batch)
        if step == 5 and lr_scale > 0.3:
            metrics = dict(metrics, loss=metrics["loss"] * np.nan)
        return new_state, metrics

    trainer.step_fn = diverges_until_the_rate_is_quartered
    summary = trainer.run()
    assert summary["step"] == 8 and trainer.recoveries == 2
    assert float(trainer.state.lr_scale) == 0.25 and trainer.data_offset == 4  # skipped 2 batches, then 2 more
    _, meta = Checkpointer(str(tmp_path / "run" / "checkpoints"), read_only=True).restore(8, trainer.state)
    assert meta["lr_scale"] == 0.25 and meta["data_offset"] == 4 and meta["recoveries"] == 2


# -- 2. presets that mean what they say ------------------------------------------------------------

def test_preset_override_trains_that_preset(corpus, tmp_path):
    run = tmp_path / "run"
    result = run_script("aero-train", SMOKE, f"--workdir={run}", *data_flags(corpus), "--config.train.num_steps=1",
                        "--config.model.preset=SM+LN+G")
    assert result.returncode == 0, result.stderr
    model = json.loads((run / "config.json").read_text())["model"]
    assert (model["activation"], model["ln_attn"], model["ln_final"], model["entropy_reg"]) == ("gelu", True, True,
                                                                                                 False)
    assert (model["num_layers"], model["d_model"], model["max_len"]) == (2, 32, 32)  # the file's size is kept
    assert json.loads((run / "summary.json").read_text())["architecture"] == "SM+LN+G"


def test_preset_override_with_field_overrides_on_top(corpus, tmp_path):
    run = tmp_path / "run"
    result = run_script("aero-train", SMOKE, f"--workdir={run}", *data_flags(corpus), "--config.train.num_steps=1",
                        "--config.model.activation=relu", "--config.model.preset=sm_ln_g")
    assert result.returncode == 0, result.stderr
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["preset"] == "SM+LN+G" and model["activation"] == "relu" and model["ln_attn"]
    assert json.loads((run / "summary.json").read_text())["architecture"] == "SM+LN+G [activation='relu']"


def test_labels_name_every_departure_from_the_preset():
    assert architecture_label(model_section("SM+LN+G", size="tiny")) == "SM+LN+G"
    assert architecture_label(model_section("SM+LN+G", size="tiny", ereg_weight=0.5)) == "SM+LN+G"  # not architecture
    older = dict(model_section("SM+LN+G", size="tiny"))
    del older["bias_groups"], older["gelu_form"]  # a config.json written before these fields: GPT-2's defaults
    assert architecture_label(older) == "SM+LN+G [bias_groups=('qk', 'v', 'o', 'ffn'), gelu_form='tanh']"


def test_unknown_preset_lists_the_known_ones(tmp_path):
    result = run_script("aero-train", SMOKE, f"--workdir={tmp_path / 'run'}", "--config.model.preset=SM+XL")
    assert_one_line(result, "aero-train", 2, "unknown preset 'SM+XL'", "SM+LN+G", "EReg(SM(t)+ScFuFFN)")
    assert not (tmp_path / "run").exists()


# -- 3. one run per workdir ------------------------------------------------------------------------

def test_a_second_run_on_a_held_workdir_fails_at_once(tmp_path):
    with workdir_module.workdir_lock(str(tmp_path)):
        started = time.time()
        result = run_script("aero-train", SMOKE, f"--workdir={tmp_path}")
    assert_one_line(result, "aero-train", 2, "is in use by another run", f"pid {os.getpid()}")
    assert time.time() - started < 60 and not (tmp_path / "config.json").exists()


def test_the_lock_is_free_again_after_the_run(tmp_path):
    with workdir_module.workdir_lock(str(tmp_path)):
        pass
    with workdir_module.workdir_lock(str(tmp_path)):
        pass


def test_a_lease_is_exclusive_until_stale(tmp_path, monkeypatch):
    with workdir_module.workdir_lock(str(tmp_path), mode="lease"):
        holder = json.loads((tmp_path / "run.lock").read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(workdir_module.WorkdirBusy, match=f"pid {os.getpid()}"):
            with workdir_module.workdir_lock(str(tmp_path), mode="lease"):
                pass
    assert not (tmp_path / "run.lock").exists()
    stale = {"host": "elsewhere", "pid": 1, "started": "long ago", "renewed_unix": time.time() - 3600}
    (tmp_path / "run.lock").write_text(json.dumps(stale))
    with workdir_module.workdir_lock(str(tmp_path), mode="lease"):  # a stale lease is taken over
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()


# -- 4. corrupt checkpoints ------------------------------------------------------------------------

def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"), key=lambda p: p.stat().st_size)


def _flip_a_byte(path: pathlib.Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


def _truncate(path: pathlib.Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _half_delete(step_dir: pathlib.Path):
    """The arrays' data files gone, the metadata left: as `rm -r`, or the trainer deleting an old checkpoint, leaves
    a checkpoint midway."""
    for data in list(step_dir.rglob("d")):
        shutil.rmtree(data)


def _remove_metadata(step_dir: pathlib.Path):
    for path in step_dir.rglob("*"):
        if path.is_file() and "meta" in path.relative_to(step_dir).parts[0]:
            path.unlink()


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated file", "missing metadata"])
def test_a_damaged_checkpoint_is_moved_aside_and_the_previous_one_used(corpus, tmp_path, capfd, damage):
    config = small_config(corpus)
    Trainer(config, str(tmp_path / "run")).run()
    step_dir = tmp_path / "run" / "checkpoints" / "8"
    if damage == "flipped bytes":
        _flip_a_byte(_largest_data_file(step_dir))
    elif damage == "truncated file":
        _truncate(_largest_data_file(step_dir))
    else:
        _remove_metadata(step_dir)
    trainer = Trainer(config, str(tmp_path / "run"))
    assert trainer.resumed_from == 4
    err = capfd.readouterr().err
    assert "checkpoint at step 8 is unreadable" in err and "bound method" not in err
    if damage == "flipped bytes":  # a byte of raw array data orbax reads without complaint, caught by the
        # fingerprints; where the save laid a compressed chunk there, TensorStore refuses it itself
        assert "differ from what was saved" in err or "TensorStore" in err or "Error" in err.split("unreadable")[1]
    assert (tmp_path / "run" / "checkpoints" / "8.unreadable").is_dir()


def test_a_checkpoint_with_nonfinite_parameters_is_not_good(tmp_path):
    checkpoints = Checkpointer(str(tmp_path))
    state = {"params": {"w": jnp.ones((3,))}}
    checkpoints.save(1, state, {})
    checkpoints.save(2, {"params": {"w": jnp.asarray([1.0, np.nan, 1.0])}}, {})
    checkpoints.wait()
    with pytest.raises(CorruptCheckpoint, match="non-finite"):
        checkpoints.restore(2, state)
    step, restored, _ = checkpoints.restore_latest(state)
    assert step == 1 and np.array_equal(restored["params"]["w"], np.ones(3))


def test_every_changed_word_changes_the_fingerprint():
    state = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "b": jnp.ones((2,), jnp.bfloat16)}
    original = fingerprints(state)
    for index in np.ndindex(3, 4):
        assert fingerprints({**state, "w": state["w"].at[index].add(1e-6)}) != original, index
    swapped = state["w"].at[0, 0].set(state["w"][0, 1]).at[0, 1].set(state["w"][0, 0])
    assert fingerprints({**state, "w": swapped}) != original
    assert fingerprints({**state, "b": state["b"].at[1].set(2)})["['b']"] != original["['b']"]


def test_fingerprints_can_be_turned_off(tmp_path):
    checkpoints = Checkpointer(str(tmp_path), fingerprint=False)
    state = {"params": {"w": jnp.ones((3,))}}
    checkpoints.save(1, state, {"data_offset": 0})
    checkpoints.wait()
    assert checkpoints.restore(1, state)[1] == {"data_offset": 0}


def test_unreadable_reasons_carry_no_object_reprs():
    class Opaque:
        def read(self):
            pass

    assert short_reason(ValueError(f"cannot use {Opaque().read} here\nmore")) == "cannot use"
    assert short_reason(ValueError(f"spec details: {Opaque()}")) == "spec"
    tensorstore = ('NOT_FOUND: Error opening "cast" driver: Error opening "zarr" driver: Error reading "step/.zarray" '
                   'in OCDBT database [tensorstore_spec=\'{"driver":"zarr","x":[1]}\'] '
                   '[tensorstore_spec[1]=\'{"driver":"cast"}\']')
    assert short_reason(ValueError(tensorstore)) == 'NOT_FOUND: Error reading "step/.zarray" in OCDBT database'
    assert len(short_reason(ValueError("x" * 5000))) == 200


# -- 6. failed writes leave nothing behind ---------------------------------------------------------

def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path, monkeypatch):
    original = epath.Path.write_text

    def disk_full(self, text, *args, **kwargs):
        original(self, "", *args, **kwargs)  # the file exists, empty, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(epath.Path, "write_text", disk_full)
    with pytest.raises(OSError):
        workdir_module.write_text_atomically(epath.Path(tmp_path) / "config.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_failures_are_classified_by_kind():
    assert classify(ConfigError("x=1 is invalid")) == (2, "x=1 is invalid")
    assert classify(OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl")) == (
        1, "no space left on device while writing /w/metrics.jsonl")
    orbax_text = ('RESOURCE_EXHAUSTED: Error writing "p" in OCDBT database at local file "/w/c/8.tmp/": '
                  'No space left on device')
    assert classify(ValueError(orbax_text)) == (1, "no space left on device while writing /w/c/8.tmp/")
    assert classify(PermissionError(errno.EACCES, "Permission denied", "/w/x"))[0] == 2
    assert classify(KeyError("boom")) == (1, "KeyError: boom")


@pytest.mark.parametrize("args, status, expected", [
    (["--config.train.num_stpes=3"], 2, "unknown config field train.num_stpes; did you mean train.num_steps?"),
    (["--config.optim.peak_lr=nan"], 2, "optim.peak_lr=nan is invalid; accepted: a finite number > 0"),
    (["--config.recovery.max_recoveries=-1"], 2, "recovery.max_recoveries=-1 is invalid"),
    (["--config.train.num_steps=abc"], 2, "--config.train.num_steps=abc"),
    (["--config.model.remat=all"], 2, "remat='all' is invalid; accepted: none, block, dots"),
    (["--config.model.vocab_size=100"], 2, "vocab_size=100 does not match the byte tokenizer's 257"),
    (["--config.mesh.fsdp=0"], 2, "is invalid; accepted: positive sizes"),
])
def test_bad_overrides_fail_in_one_line(tmp_path, args, status, expected):
    assert_one_line(run_script("aero-train", SMOKE, f"--workdir={tmp_path / 'run'}", *args), "aero-train", status,
                    expected)
    assert not (tmp_path / "run").exists()  # refused before anything is created


def test_a_refused_run_changes_nothing_in_an_existing_run(finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = _snapshot(run)
    assert_one_line(run_script("aero-train", SMOKE, f"--workdir={run}", "--config.optim.peak_lr=0"), "aero-train", 2,
                    "optim.peak_lr=0.0 is invalid")
    assert _snapshot(run) == before


@pytest.mark.parametrize("script, expected", [("aero-train", ["--config:", "--workdir:", "--config.FIELD=VALUE"]),
                                              ("aero-eval", ["--workdir:", "--[no]verbose:"])])
def test_help_prints_the_usage_and_the_flags(script, expected):
    result = run_script(script, "--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith(f"usage: {script} --") and "helpfull" not in result.stdout
    for text in expected:
        assert text in result.stdout, result.stdout


def test_bad_config_files_and_workdirs_fail_in_one_line(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        ([f"--config={tmp_path / 'missing.py'}", f"--workdir={tmp_path}"], "cannot be loaded (No such file"),
        ([f"{SMOKE[:-len(':smoke')]}:nope", f"--workdir={tmp_path}"], "unknown variant 'nope'"),
        ([SMOKE, f"--workdir={a_file}"], "is a file; accepted: a directory"),
        ([SMOKE, f"--workdir={a_file / 'below'}"], "cannot be created"),
    ]
    for args, expected in cases:
        assert_one_line(run_script("aero-train", *args), "aero-train", 2, expected)


def test_readers_fail_in_one_line(tmp_path):
    for script in ("aero-eval", "aero-report", "aero-ln-substitute"):
        args = [tmp_path] if script == "aero-report" else [f"--workdir={tmp_path}"]
        assert_one_line(run_script(script, *args), script, 2, "no config.json")
    (tmp_path / "config.json").mkdir()
    assert_one_line(run_script("aero-eval", f"--workdir={tmp_path}"), "aero-eval", 2,
                    f"workdir {tmp_path} cannot be read (Is a directory: {tmp_path / 'config.json'})")


# -- 7. validation of every number -----------------------------------------------------------------

@pytest.mark.parametrize("section, field, value", [
    ("optim", "peak_lr", float("nan")), ("optim", "peak_lr", float("inf")), ("optim", "weight_decay", -0.1),
    ("optim", "b2", 1.0), ("optim", "eps", 0.0), ("optim", "clip_norm", float("nan")),
    ("optim", "warmup_fraction", 1.0), ("optim", "end_lr_fraction", 1.5), ("optim", "power", 0.0),
    ("recovery", "max_recoveries", -1), ("recovery", "lr_factor", 0.0), ("recovery", "lr_factor", float("nan")),
    ("train", "eval_batch_size", 0), ("model", "ereg_weight", float("nan")), ("model", "init_std", float("nan")),
    ("model", "ln_epsilon", 0.0), ("model", "temperature_init", float("inf")), ("model", "preset", "SM+XL"),
    ("data", "tokenizer", "words"),
])
def test_out_of_range_values_are_refused_by_name(section, field, value):
    config = base_config()
    config[section][field] = value
    with pytest.raises(ConfigError, match=field):
        validate(config)


def test_seed_must_be_a_non_negative_integer():
    config = base_config()
    config.seed = -1
    with pytest.raises(ConfigError, match="seed=-1"):
        validate(config)


# -- 8. small things -------------------------------------------------------------------------------

def test_rerunning_a_finished_run_adds_no_records(corpus, tmp_path):
    config = small_config(corpus, num_steps=4)
    first = Trainer(config, str(tmp_path / "run")).run()
    records = read_metrics(tmp_path / "run")
    again = Trainer(config, str(tmp_path / "run")).run()
    assert read_metrics(tmp_path / "run") == records
    assert again["validation_loss"] == first["validation_loss"]


def test_cache_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        cache.cached_array(str(tmp_path), {"k": 1}, lambda: np.arange(4), name="x")
    finally:
        os.umask(previous)
    for path in tmp_path.glob("x-*.*"):
        if path.suffix in (".npy", ".json"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_cache_whose_bytes_changed_is_rebuilt(tmp_path, monkeypatch):
    built = []

    def build():
        built.append(1)
        return np.arange(1000, dtype=np.int32)

    cache.cached_array(str(tmp_path), {"k": 1}, build, name="x")
    array_path = next(tmp_path.glob("x-*.npy"))
    data = bytearray(array_path.read_bytes())
    data[-10] ^= 0x01  # same size and shape: only the checksum can tell
    array_path.write_bytes(bytes(data))
    monkeypatch.setattr(cache, "_VERIFIED", set())  # a new process
    again = cache.cached_array(str(tmp_path), {"k": 1}, build, name="x")
    assert len(built) == 2 and np.array_equal(again, np.arange(1000))


def test_a_stale_incomplete_build_is_removed(corpus, tmp_path, capfd):
    stale = tmp_path / "python_stdlib" / "incomplete.ABC123_1.0.0"
    stale.mkdir(parents=True)
    (stale / "partial.array_record").write_bytes(b"\0" * 10)
    prepare_stdlib(str(tmp_path), source_dir=corpus["source_dir"])
    assert not stale.exists()
    assert f"removed {stale}" in capfd.readouterr().err


# -- slow: real processes, kills, privileges ------------------------------------------------------

def _train_command(workdir, corpus, *extra):
    return [str(BIN / "aero-train"), SMOKE, f"--workdir={workdir}", *data_flags(corpus), *extra]


def _wait_for_steps(workdir, count, process, deadline_s=240):
    deadline = time.time() + deadline_s
    while time.time() < deadline and process.poll() is None:
        if (workdir / "metrics.jsonl").exists() and len(train_losses(workdir)) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"the run did not reach {count} logged steps")


@pytest.mark.slow
def test_two_concurrent_runs_one_refused(corpus, tmp_path):
    run = tmp_path / "run"
    extra = ["--config.train.num_steps=40", "--config.train.log_every=1", "--config.train.eval_every=1000"]
    first = subprocess.Popen(_train_command(run, corpus, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    _wait_for_steps(run, 1, first)
    second = subprocess.run(_train_command(run, corpus, *extra), capture_output=True, text=True, timeout=120)
    assert_one_line(second, "aero-train", 2, "is in use by another run", f"pid {first.pid}")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    steps = [r["step"] for r in read_metrics(run) if r["kind"] == "train"]
    assert steps == list(range(1, 41))


@pytest.mark.slow
def test_kill_9_at_random_steps_resumes_to_the_straight_run(corpus, tmp_path):
    extra = ["--config.train.num_steps=14", "--config.train.log_every=1", "--config.train.checkpoint_every=3",
             "--config.train.eval_every=1000"]
    straight = subprocess.run(_train_command(tmp_path / "straight", corpus, *extra), capture_output=True, text=True,
                              timeout=300)
    assert straight.returncode == 0, straight.stderr
    run = tmp_path / "killed"
    rng = random.Random(0)
    for kill_after in sorted(rng.sample(range(2, 12), 2)):
        process = subprocess.Popen(_train_command(run, corpus, *extra), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        _wait_for_steps(run, kill_after, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finished = subprocess.run(_train_command(run, corpus, *extra), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert train_losses(run) == train_losses(tmp_path / "straight")


@pytest.mark.slow
def test_divergence_ends_in_one_line_under_both_policies(corpus, tmp_path):
    extra = ["--config.optim.peak_lr=1e6", "--config.train.num_steps=16", "--config.train.log_every=1"]
    stop = subprocess.run(_train_command(tmp_path / "stop", corpus, *extra), capture_output=True, text=True,
                          timeout=300)
    assert stop.returncode == 1
    last = stop.stderr.strip().splitlines()[-1]
    assert last.startswith("aero-train: non-finite loss at step") and "recovery.policy='stop'" in last
    rollback = subprocess.run(_train_command(tmp_path / "rollback", corpus, *extra,
                                             "--config.recovery.policy=rollback", "--config.train.checkpoint_every=1"),
                              capture_output=True, text=True, timeout=300)
    assert rollback.returncode == 1
    scales = [line.split("learning-rate scale ")[1].split(" ")[0] for line in rollback.stderr.splitlines()
              if "rolled back" in line]
    assert scales == ["0.5", "0.25", "0.125"], rollback.stderr
    assert "recoveries used 3/3" in rollback.stderr.strip().splitlines()[-1]


_DISK_FULL_AT_STEP_8 = """
import orbax.checkpoint as ocp
original = ocp.CheckpointManager.save
def save(self, step, *args, **kwargs):
    if step == 8:
        raise ValueError('RESOURCE_EXHAUSTED: Error writing "params" in OCDBT database at local file "'
                         + str(self.directory) + '/8.orbax-checkpoint-tmp/": Failed to write 54454 bytes to file 19: '
                         + "No space left on device [os_error_code='28']")
    return original(self, step, *args, **kwargs)
ocp.CheckpointManager.save = save
from aero_jax.cli import train
train()
"""


@pytest.mark.slow
def test_a_full_disk_during_a_save_ends_in_one_line(corpus, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", _DISK_FULL_AT_STEP_8, SMOKE, f"--workdir={run}",
                             *data_flags(corpus)], capture_output=True, text=True, timeout=300)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith("aero-train: no space left on device"), result.stderr
    assert "checkpoint at step 8" in last and "last good checkpoint: step 4" in last
    assert str(run / "checkpoints") in last and "Traceback" not in result.stderr
    assert "No space left on device" in (run / "logs" / "aero-train.log").read_text()
    assert not [p for p in run.rglob("*.tmp")]


def _reader_tree(corpus) -> pathlib.Path:
    """A finished run, its data and its source, in a folder every user can read."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="aero-readonly-"))
    root.chmod(0o755)
    shutil.copytree(corpus["source_dir"], root / "source")
    config = small_config({"source_dir": str(root / "source"), "data_dir": str(root / "tfds"),
                           "cache_dir": str(root / "cache")})
    Trainer(config, str(root / "run")).run()
    _flip_a_byte(_largest_data_file(root / "run" / "checkpoints" / "8"))  # readers must skip it, not move it
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return root


def _snapshot(root: pathlib.Path):
    return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*"))


def _as_a_reader():
    """As root, run the child without the capabilities that write through permission bits."""
    if os.geteuid() != 0:
        return {}

    def drop_dac_override():
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, out of the bounding set
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return {"preexec_fn": drop_dac_override}


@pytest.mark.slow
def test_readers_leave_a_read_only_workdir_alone(corpus):
    root = _reader_tree(corpus)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="aero-reader-out-"))
    scratch.chmod(0o777)
    env = {**os.environ, "HOME": str(scratch), "MPLCONFIGDIR": str(scratch), "TMPDIR": str(scratch)}
    before = _snapshot(root)
    run = root / "run"
    try:
        evaluated = run_script("aero-eval", f"--workdir={run}", env=env, **_as_a_reader())
        assert evaluated.returncode == 0, evaluated.stderr
        assert json.loads(evaluated.stdout)["step"] == 4
        assert "checkpoint at step 8 is unreadable" in evaluated.stderr and "skipped it" in evaluated.stderr
        reported = run_script("aero-report", run, f"--out={scratch / 'report'}", env=env, **_as_a_reader())
        assert reported.returncode == 0, reported.stderr
        assert_one_line(run_script("aero-report", run, env=env, **_as_a_reader()), "aero-report", 2,
                        f"cannot write to {run / 'report'}", "--out")
        assert_one_line(run_script("aero-ln-substitute", f"--workdir={run}", env=env, **_as_a_reader()),
                        "aero-ln-substitute", 2, "--out")
        assert_one_line(run_script("aero-train", SMOKE, f"--workdir={run / 'new'}", env=env, **_as_a_reader()),
                        "aero-train", 2, "cannot be created")
        assert _snapshot(root) == before
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


# -- readers of a run, and what they write ---------------------------------------------------------

@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):
    """A tiny finished run: checkpoints and evaluations at steps 4 and 8."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    Trainer(small_config(corpus), str(workdir)).run()
    return workdir


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _trainer_replaces_8_by_12_while_it_is_read(monkeypatch, run):
    """Reading step 8 of `run` fails as it does while a trainer saves step 12 and deletes step 8 (keep 1)."""
    original = Checkpointer.restore

    def restore(self, step, like):
        if step == 8 and (run / "checkpoints" / "8").exists():
            shutil.copytree(run / "checkpoints" / "8", run / "checkpoints" / "12")
            shutil.rmtree(run / "checkpoints" / "8")
            raise ValueError('NOT_FOUND: Error reading "lr_scale/.zarray" in OCDBT database')  # as orbax says it
        return original(self, step, like)

    monkeypatch.setattr(Checkpointer, "restore", restore)


def test_a_checkpoint_the_trainer_deletes_while_it_is_read_gives_way_to_the_newest(finished, tmp_path, monkeypatch,
                                                                                    capfd):
    run = _copy(finished, tmp_path)
    _trainer_replaces_8_by_12_while_it_is_read(monkeypatch, run)
    assert restore_run(str(run)).step == 12
    assert capfd.readouterr().err == ""  # a deletion is not damage: nothing to report


def test_a_step_asked_for_and_deleted_while_it_is_read_is_refused_naming_the_steps(finished, tmp_path, monkeypatch):
    run = _copy(finished, tmp_path)
    _trainer_replaces_8_by_12_while_it_is_read(monkeypatch, run)
    with pytest.raises(ConfigError, match="step 8 has no checkpoint in .*; accepted: 4, 12$"):
        restore_run(str(run), 8)  # a step asked for is that step or a refusal, never another


@pytest.mark.parametrize("damage", [lambda step_dir: _flip_a_byte(_largest_data_file(step_dir)), _half_delete],
                         ids=["flipped bytes", "half deleted"])
def test_a_damaged_newest_checkpoint_is_skipped_in_one_line_and_refused_when_asked_for(finished, tmp_path, capfd,
                                                                                         damage):
    run = _copy(finished, tmp_path)
    damage(run / "checkpoints" / "8")
    assert restore_run(str(run)).step == 4
    note = capfd.readouterr().err.splitlines()
    assert len(note) == 1 and len(note[0]) < 400, note
    assert note[0].startswith("checkpoint at step 8 is unreadable (") and note[0].endswith("; skipped it, read step 4")
    with pytest.raises(ConfigError, match=r"^checkpoint 8 in .* is unreadable \(.*\); accepted: a readable step: 4$"):
        restore_run(str(run), 8)
    damage(run / "checkpoints" / "4")
    with pytest.raises(ConfigError, match=r"^no checkpoint in .* is readable \(steps 4, 8; step 8: ") as refused:
        restore_run(str(run))
    assert len(str(refused.value)) < 500 and "tensorstore_spec" not in str(refused.value)
    with pytest.raises(ConfigError, match=r"accepted: a readable step \(this run has none\)$"):
        restore_run(str(run), 4)


def _reader_commands(run, out):
    """(script, arguments, exit status when it read a checkpoint) of every command that reads one; aero-pi-measure's
    SPU environment is a stand-in that fails, after the checkpoint is read."""
    return {"aero-eval": ([f"--workdir={run}"], 0), "aero-report": ([run, f"--out={out / 'report'}"], 0),
            "aero-sample": (["--workdir", run, "--prompt", "def", "--max-new-tokens", "2"], 0),
            "aero-export": (["--workdir", run, "--out", out / "export"], 0),
            "aero-pi-measure": (["--workdir", run], 1)}


_NO_SPU = {**os.environ, "AERO_PI_PYTHON": shutil.which("false")}


@pytest.mark.slow
@pytest.mark.parametrize("script", ["aero-eval", "aero-report", "aero-sample", "aero-export", "aero-pi-measure"])
def test_every_reader_skips_a_half_deleted_newest_checkpoint_in_one_line(finished, tmp_path, script):
    run = _copy(finished, tmp_path)
    _half_delete(run / "checkpoints" / "8")
    args, status = _reader_commands(run, tmp_path)[script]
    result = run_script(script, *args, env=_NO_SPU)
    note = result.stderr.splitlines()[0]
    assert result.returncode == status, result.stderr[-3000:]
    assert note.startswith("checkpoint at step 8 is unreadable (") and note.endswith("; skipped it, read step 4")
    assert len(note) < 400 and len(result.stderr.splitlines()) == (1 if status == 0 else 2), result.stderr[-3000:]
    if script in ("aero-sample", "aero-export", "aero-pi-measure"):
        asked, _ = _reader_commands(run, tmp_path / "asked")[script]
        assert_one_line(run_script(script, *asked, "--step", 8, env=_NO_SPU), script, 2,
                        f"checkpoint 8 in {run / 'checkpoints'} is unreadable (", "accepted: a readable step: 4")


@pytest.mark.slow
def test_every_reader_says_a_run_it_may_not_read_cannot_be_read(finished, tmp_path):
    run = _copy(finished, tmp_path)
    run.chmod(0)
    try:
        for script, (args, _) in _reader_commands(run, tmp_path).items():
            assert_one_line(run_script(script, *args, env=_NO_SPU, **_as_a_reader()), script, 2,
                            f"workdir {run} cannot be read (Permission denied: {run / 'config.json'})")
    finally:
        run.chmod(0o755)


def test_an_export_carries_its_own_step_and_mode_and_cleans_what_killed_exports_left(finished, tmp_path):
    out, dead = tmp_path / "export", dead_writer()
    (tmp_path / f"export.partial-{dead}").mkdir()  # a kill -9 during a write
    (tmp_path / "export.partial-elsewhere-1").mkdir()  # another host's writer, which this host cannot judge
    evaluations = {r["step"]: r["perplexity"] for r in read_metrics(finished) if r["kind"] == "eval"}
    previous = os.umask(0o022)
    try:
        to_pytorch(str(finished), str(out), step=4)
    finally:
        os.umask(previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "export.partial-elsewhere-1"]
    assert json.loads((out / "config.json").read_text())["aero"]["validation_perplexity"] == evaluations[4] != \
        evaluations[8]
    assert f"validation perplexity {evaluations[4]:.3f}." in (out / "README.md").read_text()
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {p.name: 0o644 for p in out.iterdir()}
    moved_aside = tmp_path / f"again.previous-{dead}"  # a kill -9 between moving the old export aside and replacing it
    shutil.copytree(out, moved_aside)
    with pytest.raises(ConfigError, match="again already exists"):
        to_pytorch(str(finished), str(tmp_path / "again"))
    assert (tmp_path / "again" / "model.safetensors").is_file() and not moved_aside.exists()


def test_a_second_export_to_the_same_new_folder_keeps_what_the_first_wrote(finished, tmp_path, monkeypatch):
    out = tmp_path / "export"
    original = export_module._write_tokenizer

    def while_another_export_finishes_first(tokenizer, staging):
        original(tokenizer, staging)
        out.mkdir()
        (out / "model.safetensors").write_text("the other export's")

    monkeypatch.setattr(export_module, "_write_tokenizer", while_another_export_finishes_first)
    with pytest.raises(ConfigError, match="was written by another process meanwhile and is kept"):
        to_pytorch(str(finished), str(out))
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert (out / "model.safetensors").read_text() == "the other export's"


def test_overwrite_refuses_an_export_folder_that_holds_other_files(finished, tmp_path):
    out = tmp_path / "export"
    to_pytorch(str(finished), str(out))
    (out / ".git").mkdir()
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    assert_one_line(run_script("aero-export", "--workdir", finished, "--out", out, "--overwrite"), "aero-export", 2,
                    "also holds .git, notes.txt", "which --overwrite would delete")
    assert _snapshot(out) == before
    assert_one_line(run_script("aero-export", "--workdir", finished, "--out", tmp_path / "new", "--step", "0"),
                    "aero-export", 2, "step 0 has no checkpoint", "accepted: 4, 8")


# -- slow: Ctrl-C, and readers while a run trains ---------------------------------------------------

_INTERRUPTED_IN = """
import os, signal, sys
import {module} as target

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if the suite runs in the background

def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, while the command is doing this

target.{function} = interrupted
sys.argv[0] = {prog!r}
from {entry_module} import {entry}
{entry}()
"""


def _interrupted(prog, where, entry, *args):
    """`prog` run with a SIGINT delivered when it calls `where` (module.function)."""
    module, function = where.rsplit(".", 1)
    entry_module, entry = entry.split(":")
    code = _INTERRUPTED_IN.format(module=module, function=function, prog=prog, entry_module=entry_module, entry=entry)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ctrl_c_ends_the_readers_and_prepare_data_in_one_line(finished, corpus, tmp_path):
    exported = _interrupted("aero-export", "aero_jax.export.save_tensors", "aero_jax.export.cli:export_main",
                            "--workdir", finished, "--out", tmp_path / "export")
    assert_one_line(exported, "aero-export", 130, "interrupted; nothing was written")
    assert list(tmp_path.iterdir()) == []
    sampled = _interrupted("aero-sample", "aero_jax.sample.generate", "aero_jax.sample:main", "--workdir", finished,
                           "--prompt", "def")
    assert_one_line(sampled, "aero-sample", 130, "interrupted; nothing was written")
    assert sampled.stdout == ""
    cache_dir = tmp_path / "cache"
    prepared = _interrupted("aero-prepare-data", "aero_jax.data.cache.write_rows", "aero_jax.cli:prepare_data", SMOKE,
                            *data_flags({**corpus, "cache_dir": cache_dir}))
    assert_one_line(prepared, "aero-prepare-data", 130, "interrupted; finished cache files are kept")
    assert [p.name for p in cache_dir.iterdir() if p.suffix != ".lock"] == []


@pytest.mark.slow
def test_readers_of_a_run_that_is_training_read_its_newest_checkpoint(corpus, tmp_path):
    run = tmp_path / "run"
    extra = ["--config.train.num_steps=100000", "--config.train.keep_checkpoints=1",
             "--config.train.checkpoint_every=2", "--config.train.eval_every=100000", "--config.train.log_every=1"]
    training = subprocess.Popen(_train_command(run, corpus, *extra), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        _wait_for_steps(run, 4, training)
        for attempt in range(4):
            exported = run_script("aero-export", "--workdir", run, "--out", tmp_path / f"export{attempt}")
            assert exported.returncode == 0 and exported.stderr == "", exported.stderr[-3000:]
            sampled = run_script("aero-sample", "--workdir", run, "--prompt", "def", "--max-new-tokens", "4")
            assert sampled.returncode == 0 and sampled.stderr == "", sampled.stderr[-3000:]
        assert training.poll() is None  # every read overlapped the run's saves and deletions
    finally:
        training.send_signal(signal.SIGTERM)
        training.wait(timeout=120)
