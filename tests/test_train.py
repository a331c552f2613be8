"""The training system end to end on a small folder of Python files: resume, signals, bad input."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from aero_jax.config import ConfigError
from aero_jax.run_config import model_section
from aero_jax.run_log import read_metrics
from aero_jax.trainer import Divergence, Trainer
from conftest import assert_one_line, run_script, run_until_killed, small_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def train_losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["kind"] == "train"}


@pytest.mark.slow
def test_resume_after_a_kill_equals_a_straight_run(corpus, tmp_path):
    config = small_config(corpus)
    straight = Trainer(config, str(tmp_path / "straight")).run()
    assert straight["step"] == 8
    run_until_killed(Trainer(config, str(tmp_path / "resumed")), at_step=6)  # after the save of step 4 has committed
    resumed = Trainer(config, str(tmp_path / "resumed"))
    assert resumed.resumed_from == 4
    resumed.run()
    assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "straight")
    assert sorted(train_losses(tmp_path / "straight")) == list(range(1, 9))


def _cli(*args):
    return [sys.executable, "-c", "from aero_jax.cli import train; train()", *args]


def _overrides(corpus):
    return [f"--config.data.{k}={v}" for k, v in corpus.items()]


@pytest.mark.slow
def test_sigterm_leaves_a_resumable_workdir(corpus, tmp_path):
    workdir = tmp_path / "run"
    cmd = _cli(f"--config={ROOT / 'configs' / 'default.py'}:smoke", f"--workdir={workdir}", *_overrides(corpus),
               "--config.train.num_steps=100000", "--config.train.log_every=1", "--config.train.checkpoint_every=1000",
               "--config.train.eval_every=1000")
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
        time.sleep(0.5)
    while time.time() < deadline and len(read_metrics(workdir)) < 3:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    saved = [int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()]
    assert saved and max(saved) >= 3, saved
    last = max(saved)

    rerun = subprocess.run(_cli(f"--config={ROOT / 'configs' / 'default.py'}:smoke", f"--workdir={workdir}",
                                *_overrides(corpus), f"--config.train.num_steps={last + 2}",
                                "--config.train.eval_every=1000"),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "received SIGTERM: saved the checkpoint" in err
    assert f"resumed from the checkpoint at step {last}" in rerun.stderr
    assert "validation perplexity" in rerun.stdout


def test_nonfinite_loss_stops_with_step_and_checkpoint(corpus, tmp_path):
    trainer = Trainer(small_config(corpus), str(tmp_path / "run"))
    trainer.step_fn = _poison(trainer.step_fn, at_step=5, times=1)
    with pytest.raises(Divergence, match=r"non-finite loss at step 5 \(last good checkpoint: step 4"):
        trainer.run()
    assert json.load(open(tmp_path / "run" / "nonfinite_batch_step5.json"))["indices"]


def test_nonfinite_loss_rolls_back_when_asked(corpus, tmp_path):
    config = small_config(corpus)
    config.recovery.policy = "rollback"
    trainer = Trainer(config, str(tmp_path / "run"))
    trainer.step_fn = _poison(trainer.step_fn, at_step=5, times=1)
    summary = trainer.run()
    assert summary["step"] == 8 and trainer.recoveries == 1 and trainer.data_offset == 2
    assert float(trainer.state.lr_scale) == 0.5
    assert sorted(train_losses(tmp_path / "run")) == list(range(1, 9))


def _poison(step_fn, *, at_step, times):
    """A step function whose loss is NaN at `at_step` for its first `times` visits."""
    visits = {"left": times}

    def poisoned(state, batch):
        step = int(state.step)
        new_state, metrics = step_fn(state, batch)
        if step == at_step and visits["left"]:
            visits["left"] -= 1
            metrics = dict(metrics, loss=metrics["loss"] * np.nan)
        return new_state, metrics

    return poisoned


def test_unreadable_checkpoint_is_reported_and_the_previous_one_used(corpus, tmp_path, capfd):
    config = small_config(corpus)
    Trainer(config, str(tmp_path / "run")).run()
    state_dir = tmp_path / "run" / "checkpoints" / "8" / "state"
    for path in state_dir.rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "metadata" not in path.name:
            path.write_bytes(b"\0" * 7)
    trainer = Trainer(config, str(tmp_path / "run"))
    assert trainer.resumed_from == 4
    assert "checkpoint at step 8 is unreadable" in capfd.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "8.unreadable").is_dir()
    trainer.run()
    assert (tmp_path / "run" / "checkpoints" / "8").is_dir()


def test_a_relative_workdir_checkpoints_and_resumes(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Trainer(small_config(corpus, num_steps=4), "workdirs/relative").run()
    assert (tmp_path / "workdirs" / "relative" / "checkpoints" / "4").is_dir()
    assert Trainer(small_config(corpus, num_steps=4), "workdirs/relative").resumed_from == 4


def test_workdir_of_another_architecture_is_refused(corpus, tmp_path):
    Trainer(small_config(corpus, num_steps=1), str(tmp_path / "run")).run()
    other = small_config(corpus)
    other.model = model_section("EReg(SM(t)+ScFuFFN)", size="tiny", num_layers=3, vocab_size=257, max_len=32)
    with pytest.raises(ConfigError, match=r"num_layers=2 \(this config: 3\)"):
        Trainer(other, str(tmp_path / "run"))


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory):
    """A 2-step run of the smoke model, checkpointed at its end."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    Trainer(small_config(corpus, num_steps=2), str(workdir)).run()
    return workdir


def test_resuming_with_another_training_config_is_refused_and_changes_nothing(corpus, finished_run):
    config_json = (finished_run / "config.json").read_bytes()
    smoke = f"--config={ROOT / 'configs' / 'default.py'}:smoke"
    data = [f"--config.data.{k}={v}" for k, v in corpus.items()]
    result = run_script("aero-train", smoke, f"--workdir={finished_run}", *data, "--config.seed=7",
                        "--config.train.batch_size=8", "--config.data.packing=concat", "--config.optim.peak_lr=0.01")
    assert_one_line(result, "aero-train", 2, "was trained with another config", "seed=0 (this config: 7)",
                    "train.batch_size=4 (this config: 8)", "data.packing='chunk' (this config: 'concat')",
                    "optim.peak_lr=0.001 (this config: 0.01)", "accepted on resume: changes to train.num_steps")
    assert (finished_run / "config.json").read_bytes() == config_json
    assert not (finished_run / "config_changes.jsonl").exists()


@pytest.mark.slow  # a whole run: make test stays within its 10 minutes
def test_extending_a_run_keeps_how_its_first_steps_were_trained(corpus, tmp_path):
    Trainer(small_config(corpus, num_steps=2), str(tmp_path / "run")).run()
    longer = small_config(corpus, num_steps=3)
    longer.recovery.policy = "rollback"
    assert Trainer(longer, str(tmp_path / "run")).resumed_from == 2
    history = [json.loads(line) for line in (tmp_path / "run" / "config_changes.jsonl").read_text().splitlines()]
    assert history == [{"step": 2, "changes": {"train.num_steps": {"from": 2, "to": 3},
                                               "recovery.policy": {"from": "stop", "to": "rollback"}}}]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["num_steps"] == 3


def test_a_workdir_with_no_checkpoint_takes_a_new_config(corpus, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(small_config(corpus, batch_size=8).to_json())
    Trainer(small_config(corpus), str(tmp_path / "run"))  # nothing was trained under the old one
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["batch_size"] == 4


def test_tokenizer_and_model_vocabulary_must_match(corpus, tmp_path):
    config = small_config(corpus)
    config.model.vocab_size = 300
    with pytest.raises(ConfigError, match="257"):
        Trainer(config, str(tmp_path / "run"))


def test_empty_source_is_refused(corpus, tmp_path):
    config = small_config(corpus)
    empty = tmp_path / "empty"
    empty.mkdir()
    config.data.update(source_dir=str(empty), data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ConfigError):
        Trainer(config, str(tmp_path / "run"))


def test_unknown_config_field_is_named(tmp_path):
    result = subprocess.run(_cli(f"--config={ROOT / 'configs' / 'default.py'}:smoke", f"--workdir={tmp_path}",
                                 "--config.train.num_stepz=3"), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "num_stepz" in result.stderr


@pytest.mark.slow
def test_aero_eval_reports_a_workdir(corpus, tmp_path):
    Trainer(small_config(corpus, num_steps=4), str(tmp_path / "run")).run()
    result = subprocess.run([sys.executable, "-c", "from aero_jax.cli import evaluate; evaluate()",
                             f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["step"] == 4 and report["validation_perplexity"] > 1
    missing = subprocess.run([sys.executable, "-c", "from aero_jax.cli import evaluate; evaluate()",
                              f"--workdir={tmp_path / 'nothing'}"], capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "no config.json" in missing.stderr
