"""aero-prepare-data and aero-tokenizer as a user runs them: prepared once, reused, bad input in one line."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import BUCKET, assert_one_line, run_script
from test_data_codeparrot import manual_folder

from aero_jax.data import BPETokenizer

SMOKE = "--config=configs/default.py:smoke"


def data_flags(corpus):
    return [f"--config.data.{k}={v}" for k, v in corpus.items()]


def reports(stdout):
    """The JSON line of each split: all that aero-prepare-data prints on stdout."""
    return [json.loads(line) for line in stdout.splitlines()]


def test_prepare_data_writes_both_splits_once(corpus):
    first = run_script("aero-prepare-data", SMOKE, *data_flags(corpus))
    assert first.returncode == 0, first.stderr[-2000:]
    splits = reports(first.stdout)
    assert [s["split"] for s in splits] == ["train", "validation"]
    assert all(s["dtype"] == "uint16" and s["seq_len"] == 32 and s["bytes"] == 2 * s["tokens"] for s in splits)
    modified = [os.stat(s["file"]).st_mtime_ns for s in splits]
    again = run_script("aero-prepare-data", SMOKE, *data_flags(corpus))
    assert again.returncode == 0 and [s["file"] for s in reports(again.stdout)] == [s["file"] for s in splits]
    assert [os.stat(s["file"]).st_mtime_ns for s in splits] == modified  # read, not rebuilt


@pytest.mark.slow
def test_a_trained_bpe_tokenizer_feeds_the_pipeline(corpus, tmp_path):
    out = tmp_path / "tokenizer.json"
    source = [f"--source-dir={corpus['source_dir']}", f"--data-dir={corpus['data_dir']}"]
    trained = run_script("aero-tokenizer", "train", "--vocab-size", "400", "--out", out, *source)
    assert trained.returncode == 0, trained.stderr[-2000:]
    tokenizer = BPETokenizer(str(out))
    assert tokenizer.vocab_size == 400 and tokenizer.decode(tokenizer.encode("def f(x):\n    return x")) == \
        "def f(x):\n    return x"
    assert_one_line(run_script("aero-tokenizer", "train", "--vocab-size", "400", "--out", out, *source),
                    "aero-tokenizer", 2, "already exists", "--overwrite")
    assert_one_line(run_script("aero-tokenizer", "train", "--vocab-size", "20", "--out", tmp_path / "x.json",
                               *source), "aero-tokenizer", 2, "--vocab-size 20 is invalid", "at least 257")
    bpe = ["--config.data.tokenizer=bpe", f"--config.data.tokenizer_path={out}"]
    prepared = run_script("aero-prepare-data", SMOKE, *data_flags(corpus), *bpe, "--config.model.vocab_size=400")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    assert_one_line(run_script("aero-prepare-data", SMOKE, *data_flags(corpus), *bpe), "aero-prepare-data", 2,
                    "model vocab_size=257 does not match the bpe tokenizer's 400", "model.vocab_size=400")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert_one_line(run_script("aero-prepare-data", SMOKE, *data_flags(corpus), "--config.data.tokenizer=bpe",
                               f"--config.data.tokenizer_path={broken}"), "aero-prepare-data", 2,
                    "is not a valid tokenizers JSON file")


DISK_FULL = """
import errno, sys
from aero_jax.data import cache

def full(f, rows):
    f.write(b"x" * 1000)
    raise OSError(errno.ENOSPC, "No space left on device")  # as a write to a full disk raises it

cache.write_rows = full
sys.argv[0] = "aero-prepare-data"
from aero_jax.cli import prepare_data
prepare_data()
"""


def test_a_full_disk_while_preparing_names_the_file_and_leaves_nothing_trusted(corpus, tmp_path):
    cache_dir = tmp_path / "cache"
    flags = data_flags({**corpus, "cache_dir": cache_dir})
    result = subprocess.run([sys.executable, "-c", DISK_FULL, SMOKE, *flags], capture_output=True, text=True,
                            timeout=300)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    expected = f"aero-prepare-data: no space left on device while writing {cache_dir}/python_stdlib_train"
    assert last.startswith(expected), last
    assert [p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")] == []


IN_A_BUCKET = """
import sys
sys.path.insert(0, {tests!r})
from conftest import mock_bucket
from aero_jax import cli
sys.argv[0] = {prog!r}
with mock_bucket({root!r}):
    getattr(cli, {entry!r})()
"""


def _in_a_bucket(prog, entry, root, *args, home):
    """A console command whose gs://test-bucket is the local folder `root`, on a host whose home is `home`."""
    code = IN_A_BUCKET.format(tests=str(pathlib.Path(__file__).parent), prog=prog, root=str(root), entry=entry)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(home)})


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "bucket"])
def test_training_after_prepare_data_tokenizes_nothing(tmp_path, where):
    manual = manual_folder(tmp_path / "manual", ".jsonl")
    cache_dir = f"{BUCKET}/cache" if where == "bucket" else tmp_path / "cache"
    config = [SMOKE, "--config.data.dataset=codeparrot_ds/released", f"--config.data.manual_dir={manual}",
              f"--config.data.data_dir={tmp_path / 'data'}", f"--config.data.cache_dir={cache_dir}",
              "--config.data.packing=concat", "--config.model.max_len=8"]
    train = [*config, f"--workdir={tmp_path / 'run'}", "--config.train.num_steps=1"]

    def command(prog, entry, args, host):
        if where == "bucket":  # each command on a host of its own, reading the bucket through its own copy
            return _in_a_bucket(prog, entry, tmp_path / "bucket", *args, home=tmp_path / host)
        return run_script(prog, *args)

    prepared = command("aero-prepare-data", "prepare_data", config, "host0")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    written = _cache_files(tmp_path)
    trained = command("aero-train", "train", train, "host1")
    assert trained.returncode == 0, trained.stderr[-2000:]  # a bucket's reader fails when the bucket has no entry
    after = _cache_files(tmp_path)
    assert set(after) == set(written)  # no other key: nothing tokenized again
    assert all(set(written[name]) <= set(after[name]) for name in written)  # nothing rewritten


def _cache_files(root):
    """{name: {(path, inode, mtime)}} of every cached split under root: each host's copy and the bucket's."""
    files = {}
    for path in root.rglob("codeparrot_ds_*.npy"):
        files.setdefault(path.name, set()).add((str(path), path.stat().st_ino, path.stat().st_mtime_ns))
    return files
