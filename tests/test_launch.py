"""The TPU launch scripts: --dry-run prints the exact commands; missing options fail clearly."""

import pathlib
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
SLICE = ["--name", "aero-test", "--zone", "us-central2-b"]


def _run(script, *args):
    return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=60)


def test_create_on_demand_spot_and_queued():
    on_demand = _run("create_tpu.sh", *SLICE, "--accelerator-type", "v4-32", "--dry-run")
    assert on_demand.returncode == 0, on_demand.stderr
    assert on_demand.stdout.split() == ["gcloud", "compute", "tpus", "tpu-vm", "create", "aero-test", "--zone",
                                        "us-central2-b", "--accelerator-type", "v4-32", "--version",
                                        "tpu-ubuntu2204-base"]
    spot = _run("create_tpu.sh", *SLICE, "--accelerator-type", "v5p-16", "--spot", "--project", "p", "--dry-run")
    assert spot.stdout.split()[-3:] == ["--spot", "--project", "p"]
    queued = _run("create_tpu.sh", *SLICE, "--accelerator-type", "v4-32", "--queued", "--dry-run")
    assert "queued-resources create aero-test --node-id aero-test" in queued.stdout


def test_setup_installs_the_launching_commit_on_every_worker():
    sha = subprocess.run(["git", "-C", str(LAUNCH), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = _run("setup_workers.sh", *SLICE, "--dry-run")
    assert result.returncode == 0, result.stderr
    archive, copy, install = result.stdout.splitlines()
    assert archive.startswith("git -C") and archive.endswith(sha)
    assert "tpu-vm scp" in copy and "--worker=all" in copy
    assert "--worker=all" in install and "aero-jax\\'\\[tpu\\,gcs\\]" in install and sha in install  # the tpu extra


def test_run_starts_the_same_command_on_all_workers():
    result = _run("run.sh", *SLICE, "--config", "configs/gpt2_codeparrot.py:sm_ln_g", "--workdir", "gs://b/run",
                  "--dry-run", "--", "--config.train.num_steps=10")
    assert result.returncode == 0, result.stderr
    assert "--worker=all" in result.stdout
    assert "aero-train\\ --config=configs/gpt2_codeparrot.py:sm_ln_g\\ --workdir=gs://b/run\\ " \
           "--config.train.num_steps=10" in result.stdout


def test_logs_and_delete():
    assert "--worker=0 --command tail\\ -n\\ 100\\ -f" in _run("logs.sh", *SLICE, "--follow", "--dry-run").stdout
    assert "tpu-vm delete aero-test --zone us-central2-b --quiet" in _run("delete_tpu.sh", *SLICE, "--dry-run").stdout


@pytest.mark.parametrize("script, args, message", [
    ("create_tpu.sh", ["--zone", "z", "--dry-run"], "--name is required"),
    ("run.sh", [*SLICE, "--config", "c", "--workdir", "/tmp/x", "--dry-run"], "accepted: a gs:// path"),
    ("logs.sh", [*SLICE, "--colour", "--dry-run"], "unknown option --colour"),
])
def test_bad_options_fail_with_one_clear_line(script, args, message):
    result = _run(script, *args)
    assert result.returncode == 2 and message in result.stderr and not result.stdout
