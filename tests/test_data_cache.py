"""The array cache: reused when complete, rebuilt (never trusted) after interruptions or damage."""

import json
import logging
import os

import numpy as np
import pytest
from conftest import mock_bucket

from aero_jax.config import ConfigError
from aero_jax.data import cache
from aero_jax.data.cache import cached_array

KEY = {"dataset": "python_stdlib", "dataset_version": "1.0.0", "split": "train", "tokenizer": "byte-v1",
       "seq_len": 4, "packing": "chunk"}


class Builder:
    """A build function that counts its calls."""

    def __init__(self, fill=7):
        self.calls, self.fill = 0, fill

    def __call__(self):
        self.calls += 1
        return np.full((3, 4), self.fill, dtype=np.int32)


def _files(folder, suffix):
    return sorted(p for p in os.listdir(folder) if p.endswith(suffix))


def test_second_call_reuses_the_cache(tmp_path):
    build = Builder()
    first = cached_array(tmp_path, KEY, build, name="tokens")
    second = cached_array(tmp_path, dict(reversed(list(KEY.items()))), build, name="tokens")  # order-free
    assert build.calls == 1
    np.testing.assert_array_equal(second, first)
    assert isinstance(second, np.memmap) and not second.flags.writeable
    manifest = json.loads((tmp_path / _files(tmp_path, ".json")[0]).read_text())
    assert manifest["shape"] == [3, 4] and manifest["dtype"] == "int32" and manifest["nbytes"] == 48
    assert manifest["key"]["cache_format"] == cache.FORMAT_VERSION and len(manifest["sha256"]) == 64


def test_a_different_key_gets_its_own_file(tmp_path):
    cached_array(tmp_path, KEY, Builder(1), name="tokens")
    other = cached_array(tmp_path, {**KEY, "seq_len": 8}, Builder(2), name="tokens")
    assert (other == 2).all()
    assert len(_files(tmp_path, ".npy")) == 2
    assert (cached_array(tmp_path, KEY, Builder(3), name="tokens") == 1).all()


def test_a_failing_build_leaves_nothing_trusted(tmp_path):
    def broken():
        raise RuntimeError("tokenizer crashed")

    with pytest.raises(RuntimeError):
        cached_array(tmp_path, KEY, broken, name="tokens")
    assert _files(tmp_path, ".npy") == [] and _files(tmp_path, ".json") == []
    build = Builder()
    assert (cached_array(tmp_path, KEY, build, name="tokens") == 7).all() and build.calls == 1


def test_a_crash_between_array_and_manifest_is_rebuilt(tmp_path, monkeypatch, caplog):
    real_manifest = cache._manifest

    def crash(*args):
        raise KeyboardInterrupt  # the process dies after the array was renamed into place

    monkeypatch.setattr(cache, "_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        cached_array(tmp_path, KEY, Builder(5), name="tokens")
    assert len(_files(tmp_path, ".npy")) == 1 and _files(tmp_path, ".json") == []
    monkeypatch.setattr(cache, "_manifest", real_manifest)
    build = Builder(6)
    with caplog.at_level(logging.WARNING):
        rebuilt = cached_array(tmp_path, KEY, build, name="tokens")
    assert build.calls == 1 and (rebuilt == 6).all()
    assert "no manifest" in caplog.text


@pytest.mark.parametrize("damage", ["corrupt_manifest", "truncated_array", "other_key_in_manifest"])
def test_damaged_caches_are_rebuilt_with_a_warning(tmp_path, caplog, damage):
    cached_array(tmp_path, KEY, Builder(1), name="tokens")
    array_file = tmp_path / _files(tmp_path, ".npy")[0]
    manifest_file = tmp_path / _files(tmp_path, ".json")[0]
    if damage == "corrupt_manifest":
        manifest_file.write_text('{"key": ')
    elif damage == "truncated_array":
        array_file.write_bytes(array_file.read_bytes()[:-8])
    else:
        manifest = json.loads(manifest_file.read_text())
        manifest_file.write_text(json.dumps({**manifest, "key": {**manifest["key"], "seq_len": 99}}))
    build = Builder(2)
    with caplog.at_level(logging.WARNING):
        rebuilt = cached_array(tmp_path, KEY, build, name="tokens")
    assert build.calls == 1 and (rebuilt == 2).all()
    assert "not trusted" in caplog.text
    assert (cached_array(tmp_path, KEY, Builder(3), name="tokens") == 2).all()  # the repair is trusted


def test_stale_temporaries_are_removed_and_other_keys_untouched(tmp_path):
    cached_array(tmp_path, {**KEY, "split": "validation"}, Builder(4), name="tokens")
    kept = set(os.listdir(tmp_path))
    stem = f"tokens-{cache.key_digest(cache.canonical_key(KEY))[:16]}"
    stale = tmp_path / f".{stem}.npy.abc123.tmp"
    stale.write_bytes(b"half an array")
    assert (cached_array(tmp_path, KEY, Builder(1), name="tokens") == 1).all()
    assert not stale.exists()
    assert kept <= set(os.listdir(tmp_path))
    assert (cached_array(tmp_path, {**KEY, "split": "validation"}, Builder(9), name="tokens") == 4).all()


def test_temporaries_of_other_keys_are_removed_unless_being_built(tmp_path):
    cached_array(tmp_path, {**KEY, "split": "validation"}, Builder(4), name="tokens")
    abandoned = tmp_path / ".tokens-0123456789abcdef.npy.x1.tmp"  # a key no longer asked for, killed mid-build
    (tmp_path / "tokens-0123456789abcdef.lock").touch()
    building = tmp_path / ".tokens-fedcba9876543210.npy.x2.tmp"
    foreign = tmp_path / ".tokenizer.json.x3.tmp"  # another program's atomic write into the same folder
    for path in (abandoned, building, foreign):
        path.write_bytes(b"part of a file")
    with cache.exclusive_lock(str(tmp_path / "tokens-fedcba9876543210.lock")):  # another builder holds its key
        cached_array(tmp_path, KEY, Builder(1), name="tokens")
    assert not abandoned.exists() and building.exists() and foreign.exists()


@pytest.mark.parametrize(
    "key, name, message",
    [
        (KEY, "../escape", "cache name='../escape' is invalid"),
        ({**KEY, "tokenizer": object()}, "tokens", "JSON values"),
    ],
)
def test_bad_names_and_keys_are_refused(tmp_path, key, name, message):
    with pytest.raises(ConfigError, match=message):
        cached_array(tmp_path, key, Builder(), name=name)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """gs://test-bucket/cache, backed by a local folder; returns a function that moves this host's mirror."""
    with mock_bucket(tmp_path / "bucket"):
        yield lambda host: monkeypatch.setattr(cache, "MIRROR_ROOT", str(tmp_path / host))


def test_a_bucket_cache_is_filled_once_and_read_through_each_hosts_copy(bucket, tmp_path):
    bucket("host0")
    with pytest.raises(ConfigError, match="holds no tokens-[0-9a-f]+.json; accepted: a bucket filled once by "
                                          "aero-prepare-data"):
        cached_array("gs://test-bucket/cache", KEY, Builder(), name="tokens")
    published = cached_array("gs://test-bucket/cache", KEY, Builder(4), name="tokens", publish=True)
    assert sorted(os.listdir(tmp_path / "bucket" / "cache"))[0].endswith(".json")
    bucket("host1")
    build = Builder(9)
    copied = cached_array("gs://test-bucket/cache", KEY, build, name="tokens")
    assert build.calls == 0 and (copied == 4).all() and isinstance(copied, np.memmap)  # copied, not tokenized
    np.testing.assert_array_equal(copied, published)
    bucket("host2")
    array = next(p for p in (tmp_path / "bucket" / "cache").iterdir() if p.suffix == ".npy")
    array.write_bytes(array.read_bytes()[:-4])  # a damaged upload
    with pytest.raises(ConfigError, match="is shorter than its manifest says"):
        cached_array("gs://test-bucket/cache", KEY, Builder(), name="tokens")
    assert not list((tmp_path / "host2").rglob("*.json"))  # nothing trusted on host2
    repaired = cached_array("gs://test-bucket/cache", KEY, Builder(5), name="tokens", publish=True)
    bucket("host3")
    assert (repaired == 5).all() and (cached_array("gs://test-bucket/cache", KEY, Builder(), name="tokens") == 5).all()
