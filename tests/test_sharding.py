"""Sharded training on fake CPU devices: same losses on every mesh, parameters laid out by the rules."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from aero_jax import sharding
from aero_jax.config import ConfigError

SCRIPT = pathlib.Path(__file__).with_name("sharded_run.py")
MESHES = {"data8": dict(data=8, fsdp=1, tensor=1), "fsdp4_tensor2": dict(data=1, fsdp=4, tensor=2),
          "data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2)}


def _launch(spec, tmp_path, devices, name="spec", **env):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    flags = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.Popen([sys.executable, str(SCRIPT), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", **env})


def _results(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-4000:]
    line = [l for l in out.splitlines() if l.startswith("RESULTS ")][-1]
    return json.loads(line[len("RESULTS "):])


@pytest.fixture(scope="module")
def single_device_losses(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    spec = {"corpus": corpus, "runs": [{"mesh": {"data": 1}, "workdir": str(tmp / "run")}]}
    return {int(k): v for k, v in _results(_launch(spec, tmp, 1))[0]["losses"].items()}


def _assert_same_losses(losses, reference):
    steps = sorted(reference)
    assert steps == list(range(1, 9))
    np.testing.assert_allclose([losses[str(s)] for s in steps], [reference[s] for s in steps], rtol=1e-5)


@pytest.mark.slow  # fake-device subprocesses: about a minute each
def test_every_mesh_gives_the_single_device_losses_and_the_declared_layout(corpus, tmp_path, single_device_losses):
    runs = [{"mesh": m, "workdir": str(tmp_path / n)} for n, m in MESHES.items()]
    results = _results(_launch({"corpus": corpus, "runs": runs}, tmp_path, 8))
    for result in results:
        _assert_same_losses(result["losses"], single_device_losses)
    by_mesh = {n: r["specs"] for n, r in zip(MESHES, results)}
    assert by_mesh["data8"]["block_0/attn/query/kernel"] == [None, None]  # pure data parallelism
    fsdp_tp = by_mesh["fsdp4_tensor2"]
    assert fsdp_tp["block_0/attn/query/kernel"] == ["fsdp", "tensor"]
    assert fsdp_tp["block_0/attn/out/kernel"] == ["tensor", "fsdp"]
    assert fsdp_tp["block_0/ffn/fc_in/kernel"] == ["fsdp", "tensor"]
    assert fsdp_tp["block_0/ffn/fc_out/kernel"] == ["tensor", "fsdp"]
    assert fsdp_tp["wte/embedding"] == [None, "fsdp"]  # vocabulary 257 is not divisible: replicated
    assert fsdp_tp["entropy_thresholds"] == [None, None]
    assert fsdp_tp["adam_mu/block_0/attn/query/kernel"] == ["fsdp", "tensor"]
    assert by_mesh["data2_fsdp2_tensor2"]["block_0/ffn/fc_in/kernel"] == ["fsdp", "tensor"]


@pytest.mark.slow  # fake-device subprocesses: about a minute each
def test_a_checkpoint_from_one_mesh_resumes_on_another(corpus, tmp_path, single_device_losses):
    workdir = str(tmp_path / "run")
    runs = [{"mesh": MESHES["data8"], "workdir": workdir, "crash_at": 6},
            {"mesh": MESHES["fsdp4_tensor2"], "workdir": workdir}]
    first, resumed = _results(_launch({"corpus": corpus, "runs": runs}, tmp_path, 8))
    assert resumed["resumed_from"] == 4
    _assert_same_losses(resumed["losses"], single_device_losses)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _publish_to_bucket(corpus, root, mirror, monkeypatch):
    """What aero-prepare-data does with a gs:// cache_dir: tokenize once, upload."""
    from conftest import mock_bucket
    from sharded_run import config_for

    from aero_jax import data
    from aero_jax.data import cache
    from aero_jax.trainer import load_data

    monkeypatch.setattr(cache, "MIRROR_ROOT", mirror)
    config = config_for(corpus, MESHES["data2_fsdp2_tensor2"])
    with mock_bucket(root):
        load_data(config, data.ByteTokenizer(), config.model.max_len, publish=True)


@pytest.mark.slow  # fake-device subprocesses: about a minute each
def test_two_processes_on_localhost_match_one(corpus, tmp_path, single_device_losses, monkeypatch):
    """Each process reads the data prepared once in a bucket (gs://, faked) through its own copy."""
    port, workdir = _free_port(), str(tmp_path / "run")
    bucket_corpus = {**corpus, "cache_dir": "gs://test-bucket/cache"}
    _publish_to_bucket(bucket_corpus, str(tmp_path / "bucket"), str(tmp_path / "preparing_host"), monkeypatch)
    processes = []
    for pid in range(2):
        spec = {"corpus": bucket_corpus, "runs": [{"mesh": MESHES["data2_fsdp2_tensor2"], "workdir": workdir}],
                "distributed": {"coordinator_address": f"localhost:{port}", "num_processes": 2, "process_id": pid},
                "bucket": {"root": str(tmp_path / "bucket"), "mirror": str(tmp_path / f"host{pid}")}}
        processes.append(_launch(spec, tmp_path, 4, name=f"spec{pid}"))
    results = _results(processes[0])
    out, err = processes[1].communicate(timeout=600)
    assert processes[1].returncode == 0, err[-4000:]
    assert "RESULTS" not in out  # only process 0 reports and writes
    _assert_same_losses(results[0]["losses"], single_device_losses)
    for pid in range(2):  # each host verified and kept its own copy of both splits
        assert len(list((tmp_path / f"host{pid}").rglob("*.json"))) == 2


def test_mesh_sizes_must_match_the_devices():
    with pytest.raises(ConfigError, match="does not match the 1 devices"):
        sharding.make_mesh({"data": 2})
    with pytest.raises(ConfigError, match="at most one of them -1"):
        sharding.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ConfigError, match="accepted: data, fsdp, tensor"):
        sharding.make_mesh({"model": 1})
    assert dict(sharding.make_mesh({"data": -1}).shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_indivisible_dimensions_stay_replicated():
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    spec = sharding.partition_spec(("vocab", "embed"), (257, 32), mesh, {"vocab": "tensor", "embed": "fsdp"})
    assert spec == PartitionSpec(None, None)  # axes of size 1 shard nothing


def test_rules_naming_an_unknown_mesh_axis_are_refused():
    with pytest.raises(ConfigError, match="sharding_rules.embed='model' names unknown mesh axis model"):
        sharding.check_rules({"embed": "model", "heads": "tensor", "layers": ""})


def test_a_batch_the_batch_shards_do_not_divide_is_refused():
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    sharding.check_batch_divisible(3, mesh, "train.batch_size")
    with pytest.raises(ConfigError, match="train.batch_size=6 is invalid for a mesh with 4 batch shards"):
        sharding.check_batch_divisible(6, _FakeMesh({"data": 2, "fsdp": 2, "tensor": 2}), "train.batch_size")


class _FakeMesh:
    """Only the axis sizes, which is all the batch check reads."""

    def __init__(self, shape):
        self.shape = shape
