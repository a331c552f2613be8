"""aero-compile with libtpu (`make test-tpu` installs it): the run's own steps compiled for a TPU slice.

Without libtpu the whole module is one skipped line.
"""

import json
import os
import subprocess

import pytest

pytest.importorskip("libtpu", reason="libtpu is not installed; `make test-tpu` runs these in .venv-tpu")

from conftest import BIN, assert_one_line, run_script  # noqa: E402

CONFIG = "--config=configs/default.py"
V5E_4 = "--topology=v5e:2x2"


def compile_json(*overrides, topology=V5E_4):
    result = run_script("aero-compile", CONFIG, topology, "--json", *overrides)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]  # no libtpu warnings either
    return result.returncode, json.loads(result.stdout)


def test_tiny_model_fits_and_reports_memory_and_flops(tmp_path):
    status, report = compile_json(f"--dump={tmp_path}", "--config.mesh.data=1", "--config.mesh.fsdp=-1")
    assert status == 0 and report["fits"]
    assert (report["devices"], report["device_kind"], report["mesh"]) == (4, "TPU v5 lite",
                                                                          {"data": 1, "fsdp": 4, "tensor": 1})
    assert report["hbm_bytes"] == 16 * 2 ** 30
    for name, step in report["steps"].items():
        parts = step["argument_bytes"] + step["output_bytes"] + step["temp_bytes"] - step["alias_bytes"]
        assert step["allocated_bytes"] == parts + step["code_bytes"]
        assert 0 < step["total_bytes"] < step["hbm_bytes"]  # XLA's peak
        assert step["headroom_bytes"] == step["hbm_bytes"] - step["total_bytes"]
        assert step["xla_flops"] > 0 and step["model_flops"] > 0 and step["compile_s"] > 0
        assert "HloModule" in (tmp_path / f"{name}_step.hlo.txt").read_text()
    assert report["steps"]["train"]["alias_bytes"] > 0  # the state is donated


def test_fsdp_shards_the_state_that_data_parallelism_replicates():
    _, data = compile_json("--config.mesh.data=-1")
    _, fsdp = compile_json("--config.mesh.data=1", "--config.mesh.fsdp=-1")
    assert fsdp["steps"]["train"]["argument_bytes"] < 0.5 * data["steps"]["train"]["argument_bytes"]
    for step in data["steps"].values():  # no windowed matmul loops: XLA's FLOPs are the model's and a little more
        assert step["windowed_loops"] == 0 and 1.0 < step["flops_ratio"] < 1.1, step


def test_text_report_and_an_oversized_batch_that_does_not_fit():
    result = run_script("aero-compile", CONFIG, V5E_4, "--config.train.batch_size=131072")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "train  131072" in result.stdout and " NO " in result.stdout
    assert "the train step does not fit: it needs" in result.stdout
    _, report = compile_json("--config.train.batch_size=131072")
    train = report["steps"]["train"]
    assert not report["fits"] and not train["fits"] and train["total_bytes"] > train["hbm_bytes"]
    assert report["steps"]["eval"]["fits"]


def test_remat_policies_trade_memory_for_flops():
    temps, flops = {}, {}
    for remat in ("none", "dots", "block"):
        _, report = compile_json(f"--config.model.remat={remat}", "--config.train.batch_size=512")
        temps[remat], flops[remat] = (report["steps"]["train"][k] for k in ("temp_bytes", "xla_flops"))
    assert temps["block"] < temps["dots"] < temps["none"]
    assert flops["none"] < flops["dots"] < flops["block"]


@pytest.mark.parametrize("overrides, expected", [
    (["--config.mesh.data=3"], ["does not match the 4 devices", "product is 4"]),
    (["--config.train.batch_size=6", "--config.train.eval_batch_size=4"], ["train.batch_size per accumulation step=6",
                                                                          "a multiple of 4"]),
])
def test_bad_mesh_and_batch_in_one_line(overrides, expected):
    result = run_script("aero-compile", CONFIG, V5E_4, *overrides)
    assert_one_line(result, "aero-compile", 2, *expected)


def test_topology_libtpu_refuses_in_one_line():
    result = run_script("aero-compile", CONFIG, "--topology=v5e:3x3")
    assert_one_line(result, "aero-compile", 2, "--topology=v5e:3x3 is refused by libtpu", "accepted:")


def test_existing_dump_is_not_overwritten(tmp_path):
    (tmp_path / "train_step.hlo.txt").write_text("kept")
    result = run_script("aero-compile", CONFIG, V5E_4, f"--dump={tmp_path}")
    assert_one_line(result, "aero-compile", 2, "already holds train_step.hlo.txt")
    assert (tmp_path / "train_step.hlo.txt").read_text() == "kept"


def test_cpu_training_with_libtpu_installed_is_quiet(tmp_path):
    """With JAX_PLATFORMS=cpu (as `make test-tpu` sets it) a CPU run prints no TPU warnings."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([str(BIN / "aero-train"), CONFIG, f"--workdir={tmp_path / 'run'}",
                             "--config.train.num_steps=2", "--config.train.eval_every=2", "--config.train.log_every=1",
                             "--config.train.eval_batches=1", "--config.train.checkpoint_every=2"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TPU" not in result.stderr and "libtpu" not in result.stderr, result.stderr[-3000:]
    assert "validation perplexity" in result.stdout
