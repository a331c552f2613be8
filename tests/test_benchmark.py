"""The throughput benchmark runs end to end and prints its JSON lines (figures are not asserted)."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_step_throughput_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_throughput.py"), "--tiny",
                          "--steps", "2", "--rounds", "2", "--warmup", "1"],
                         capture_output=True, text=True, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    runs = [line for line in lines if "preset" in line]
    assert [(r["preset"], r["penalty"]) for r in runs] == [
        ("SM+LN+G", False), ("EReg(SM+LN+G)", True), ("EReg(SM(t)+ScFuFFN)", True)]
    assert all(r["tokens_per_s"] > 0 for r in runs)
    assert all(0 < r["roofline_fraction"] for r in runs)
    assert "penalty_share_of_step" in lines[-1] and lines[-1]["matmul_roofline_gflops"] > 0


@pytest.mark.slow
def test_accelerator_smoke(tmp_path):
    out = tmp_path / "accelerator.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--smoke", "--steps", "2",
                    "--minutes", "0.2", "--out", str(out)], capture_output=True, text=True, check=True, timeout=900)
    report = json.loads(out.read_text())
    steps = [r for r in report["steps"] if "step_ms" in r]
    assert {(r["preset"], r["dtype"]) for r in steps} == {(p, d) for p in ("SM+LN+G", "EReg(SM(t)+ScFuFFN)")
                                                           for d in ("bfloat16", "float16")}
    assert all(r["tokens_per_s"] > 0 and r["xla_step_bytes"] > r["state_bytes"] > 0 for r in steps)
    shares = [r["penalty_share_of_step"] for r in steps if r["penalty"] == "on" and "EReg" in r["preset"]]
    assert len(shares) == 2 and all(-1 < share < 1 for share in shares)  # at this size, within timing noise of 0
    probes = report["probe"]["runs"]
    assert [p["preset"] for p in probes] == ["SM", "SM+LN+G"] and all(p["steps_done"] >= 1 for p in probes)
    assert all(len(p["nonfinite_attention_per_layer"]) == 2 for p in probes)


@pytest.mark.slow
def test_profile_smoke(tmp_path):
    out = tmp_path / "profile.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--tiny", "--preset",
                    "EReg(SM(t)+ScFuFFN)", "--steps", "2", "--out", str(out)], capture_output=True, text=True,
                   check=True, timeout=600)
    profile = json.loads(out.read_text())
    assert abs(sum(part["share"] for part in profile["parts"].values()) - 1) < 1e-3
    assert {"attention entropy, forward", "attention scores, backward", "optimizer and metrics"} <= set(profile["parts"])
    assert all("jit(train_step)" in op["op_name"] for op in profile["top"])


@pytest.mark.slow
def test_decode_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--tiny", "--repeats", "2"],
                         capture_output=True, text=True, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["position"] for line in lines[:-1]] == [2, 16, 64]
    assert all(line["cached_ms"] > 0 and line["uncached_ms"] > 0 for line in lines[:-1])
    assert {"cached_last_over_first", "speedup_at_last", "flat_within_2x", "at_least_10x"} <= set(lines[-1])


@pytest.mark.slow
def test_data_prepare_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_prepare.py"), "--size-mb", "3", "--work",
                          str(tmp_path)], capture_output=True, text=True, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line.get("step") for line in lines[:-1]] == ["write_corpus", "build_dataset", "train_tokenizer", "prepare",
                                                         "prepare", "encode_limit", "sampler_rate"]
    assert all(line["peak_rss_mb"] > 0 for line in lines[:-1])
    assert 0 < lines[-1]["bpe_fraction_of_limit"] <= 1.5 and lines[-2]["margin"] > 0


@pytest.mark.slow
def test_export_generate_smoke():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "export_generate.py"), "--tiny", "--rounds", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {line.get("generate") for line in lines} >= {"AeroForCausalLM.generate", "GPT2LMHeadModel.generate"}
    assert all(line.get("ms_per_token", 1) > 0 for line in lines) and "target >= 10x" in result.stdout
