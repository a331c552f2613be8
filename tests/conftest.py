"""Strict JAX for every test (implicit rank promotion is an error), and a small shared corpus."""

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import sysconfig

import jax
import pytest
from etils.epath import testing

from aero_jax import data
from aero_jax.run_config import base_config, model_section
from aero_jax.trainer import Trainer

jax.config.update("jax_numpy_rank_promotion", "raise")

BIN = pathlib.Path(sys.executable).parent  # the console scripts of this environment


def run_script(script, *args, timeout=600, **kwargs):
    """A console script of this environment, run as a user runs it."""
    return subprocess.run([str(BIN / script), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def assert_one_line(result, prog, status, *expected):
    """The command failed with `status` and said so in one line, `prog: ...`, holding every expected text."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"{prog}: ") and "Traceback" not in lines[0], lines[0]
    for text in expected:
        assert text in lines[0], lines[0]


def dead_writer() -> str:
    """'<this host>-<pid>' of a process that has ended, as the folders a killed export or import leaves name it."""
    process = subprocess.Popen(["true"])
    process.wait()
    return f"{socket.gethostname()}-{process.pid}"


BUCKET = "gs://test-bucket"


@contextlib.contextmanager
def mock_bucket(root: str):
    """gs://test-bucket/... read and written as the local folder `root` (what the bucket cache uses of epath)."""
    local = lambda path: os.fspath(path).replace(BUCKET, str(root))  # noqa: E731
    makedirs = lambda _, path, *a, **k: os.makedirs(local(path), exist_ok=True)  # noqa: E731
    with testing.mock_epath(exists=lambda _, path: os.path.exists(local(path)), mkdir=makedirs, makedirs=makedirs,
                            open=lambda _, path, mode="r", *a, **k: open(local(path), mode),
                            remove=lambda _, path: os.remove(local(path))):
        yield


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A few standard-library modules, at least three of them in the validation split."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p.name for p in stdlib.glob("*.py"))
    val = [f for f in files if data.stdlib.split_of(f) == "validation"][:3]
    train = [f for f in files if data.stdlib.split_of(f) == "train"][:25]
    source = tmp_path_factory.mktemp("source")
    for name in val + train:
        shutil.copy(stdlib / name, source / name)
    return {"source_dir": str(source), "data_dir": str(tmp_path_factory.mktemp("tfds")),
            "cache_dir": str(tmp_path_factory.mktemp("cache"))}


class SimulatedKill(Exception):
    """Raised where a test kills a training run."""


def run_until_killed(trainer, *, at_step: int) -> None:
    """Run `trainer` until its loop asks for the batch of `at_step`, then die there, after every save before it has
    committed (as a kill that comes after an asynchronous save does)."""
    original = trainer.batch_for

    def killed(step):
        if step == at_step:
            trainer.checkpoints.wait()
            raise SimulatedKill
        return original(step)

    trainer.batch_for = killed
    try:
        trainer.run()
    except SimulatedKill:
        return
    raise AssertionError(f"the run ended before step {at_step}")


def small_config(corpus, **train):
    """A tiny EReg(SM(t)+ScFuFFN) run on the shared corpus: 8 steps, checkpoints at 4 and 8."""
    c = base_config()
    c.model = model_section("EReg(SM(t)+ScFuFFN)", size="tiny", vocab_size=257, max_len=32)
    c.data.update(corpus)
    c.train.update(dict(num_steps=8, batch_size=4, log_every=1, eval_every=4, eval_batch_size=4, eval_batches=2,
                        checkpoint_every=4), **train)
    return c
