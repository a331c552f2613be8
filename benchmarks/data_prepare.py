"""Preparing a large corpus: throughput against the tokenizers library's own limit, and peak memory.

    python benchmarks/data_prepare.py                      # a 2 GB generated corpus (about 15 minutes on 2 cores)
    python benchmarks/data_prepare.py --size-mb 20         # a smoke run

Steps, each in its own process so that its peak resident memory (ru_maxrss) is its own:
1. write a manual folder of JSON lines: standard-library files, each copy varied (renamed identifiers),
   until --size-mb of text;
2. build the codeparrot_ds/full TFDS dataset from it (ArrayRecord);
3. prepare the packed rows (T=128) with the byte tokenizer, then with a 4,096-token byte-level BPE trained on
   the first 20 MB;
4. the limit: the BPE's `encode_batch` alone over the same texts, read beforehand in 64 MB pieces.
Prints one JSON object per step, then a summary with the BPE preparation as a fraction of the limit.
Then the sampler: rows/s that `batch_indices` + the memory-mapped rows deliver (and Grain's MapDataset over
the same rows, when Grain is installed), against what a GPT-2-small step at the papers' batch of 512 consumes
on one TPU v5e chip (from its FLOPs and the chip's peak).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time

SEQ_LEN = 128
BPE_VOCAB = 4096
V5E_PEAK_FLOPS = 197e12  # bfloat16, per chip (aero_jax.flops.peak_flops)
PAPERS_BATCH = 512


def write_corpus(folder: str, size_mb: float) -> dict:
    """JSON lines of varied standard-library files in codeparrot_ds's manual layout."""
    stdlib = sysconfig.get_paths()["stdlib"]
    texts = []
    for name in sorted(os.listdir(stdlib)):
        if name.endswith(".py"):
            with open(os.path.join(stdlib, name), encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    for split, share in (("codeparrot-ds-train", 0.98), ("codeparrot-ds-valid", 0.02)):
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        target, written, copy = share * size_mb * 1e6, 0, 0
        with open(os.path.join(folder, split, "data-00000.jsonl"), "w") as out:
            while written < target:
                for text in texts:
                    varied = re.sub(r"\bself\b", f"self{copy % 97}", text)  # each copy tokenizes a little differently
                    out.write(json.dumps({"content": varied}) + "\n")
                    written += len(varied)
                    if written >= target:
                        break
                copy += 1
    return {"corpus_mb": round(size_mb, 1)}


def build_dataset(manual: str, data_dir: str) -> dict:
    import tensorflow_datasets as tfds

    from aero_jax.data import CodeparrotDs  # importing it registers the builder

    builder = tfds.builder(f"{CodeparrotDs.name}/full", data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    train = [s for s in builder.info.splits if s.startswith("train")]
    return {"documents": sum(builder.info.splits[s].num_examples for s in train), "shards": len(train)}


def train_tokenizer(data_dir: str, out: str) -> dict:
    from aero_jax.data.pipeline import open_split, text_batches
    from aero_jax.data.tokenizer_training import train_bpe

    batches, total = [], 0
    for texts in text_batches(open_split("codeparrot_ds/full", "train", data_dir=data_dir), desc="reading"):
        batches.append(texts)
        total += sum(map(len, texts))
        if total > 20e6:
            break
    train_bpe(iter(batches), vocab_size=BPE_VOCAB, num_documents=sum(map(len, batches))).save(out)
    return {"trained_on_mb": round(total / 1e6, 1)}


def prepare(data_dir: str, cache_dir: str, tokenizer_path: str) -> dict:
    from aero_jax import data
    from aero_jax.data.pipeline import load_split

    tokenizer = data.make_tokenizer("bpe", tokenizer_path) if tokenizer_path else data.ByteTokenizer()
    rows = load_split(dataset="codeparrot_ds/full", split="train", tokenizer=tokenizer, seq_len=SEQ_LEN,
                      packing="chunk", data_dir=data_dir, cache_dir=cache_dir)
    return {"tokenizer": tokenizer.kind, "rows": rows.shape[0], "dtype": str(rows.dtype), "bytes": int(rows.nbytes)}


def encode_limit(data_dir: str, tokenizer_path: str) -> dict:
    """Seconds of `encode_batch` alone; the texts are read in 64 MB pieces outside the timed part."""
    from aero_jax import data
    from aero_jax.data.pipeline import open_split, text_batches

    tokenizer = data.make_tokenizer("bpe", tokenizer_path)
    encoding, piece, size = 0.0, [], 0
    for texts in text_batches(open_split("codeparrot_ds/full", "train", data_dir=data_dir), desc="reading"):
        piece.append(texts)
        size += sum(map(len, texts))
        if size > 64e6:
            encoding, piece, size = encoding + _encoding_seconds(tokenizer, piece), [], 0
    return {"encode_seconds": encoding + _encoding_seconds(tokenizer, piece)}


def _encoding_seconds(tokenizer, batches) -> float:
    started = time.perf_counter()
    for batch in batches:
        tokenizer.encode_batch(batch)
    return time.perf_counter() - started


def sampler_rate(cache_dir: str) -> dict:
    """Rows/s of the step-indexed sampler over the prepared memory-mapped rows, at the papers' batch."""
    import glob

    import numpy as np

    from aero_jax.data import batch_indices

    path = max(glob.glob(os.path.join(cache_dir, "codeparrot_ds_full_train_*.npy")), key=os.path.getsize)
    rows = np.load(path, mmap_mode="r")
    steps = 200
    rates = {"sampler_rows_per_s": _rows_per_s(
        lambda step: rows[batch_indices(0, step, PAPERS_BATCH, len(rows))].astype(np.int32), steps)}
    try:  # Grain, the loader of nanodo and MaxText, over the same memory-mapped rows (when installed)
        import grain
    except ImportError:
        return {**rates, "grain": "not installed (pip install grain to compare)"}
    shuffled = grain.MapDataset.source(rows).shuffle(seed=0).map(lambda row: np.asarray(row, np.int32))
    batches = shuffled.batch(PAPERS_BATCH)
    threaded = iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=os.cpu_count(), prefetch_buffer_size=4)))
    next(threaded)
    return {**rates, "grain_map_rows_per_s": _rows_per_s(lambda step: batches[step], steps // 4),
            "grain_threaded_iterator_rows_per_s": _rows_per_s(lambda step: next(threaded), steps // 4)}


def _rows_per_s(read_batch, steps: int) -> int:
    started = time.perf_counter()
    for step in range(steps):
        read_batch(step)
    return round(steps * PAPERS_BATCH / (time.perf_counter() - started))


def tpu_step_rows_per_s() -> float:
    """Rows/s one TPU v5e chip consumes in a GPT-2-small training step at T=128, at 100% of its peak."""
    from aero_jax import presets
    from aero_jax.flops import train_flops_per_token

    config = presets.model_config("SM+LN+G", size="gpt2-small", max_len=SEQ_LEN)
    return V5E_PEAK_FLOPS / (train_flops_per_token(config) * SEQ_LEN)


STEPS = {"write_corpus": write_corpus, "build_dataset": build_dataset, "train_tokenizer": train_tokenizer,
         "prepare": prepare, "encode_limit": encode_limit, "sampler_rate": sampler_rate}


def child(step: str, args) -> dict:
    """Run one step in a fresh process: its result, wall seconds and peak resident memory."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", step, "--args", json.dumps(args)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"step {step} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"step": step, **result, "seconds": round(time.perf_counter() - started, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=2048)
    parser.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--args", default="[]", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        result = STEPS[a.child](*json.loads(a.args))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps({**result, "peak_rss_mb": round(peak_mb)}))
        return
    work = a.work or tempfile.mkdtemp(prefix="aero_prepare_")
    manual, data_dir, tokenizer = (os.path.join(work, n) for n in ("manual", "tfds", "bpe.json"))
    mb = a.size_mb * 0.98  # the train split
    report = lambda r: print(json.dumps(r), flush=True)  # noqa: E731
    report(child("write_corpus", [manual, a.size_mb]))
    report(child("build_dataset", [manual, data_dir]))
    report(child("train_tokenizer", [data_dir, tokenizer]))
    byte = child("prepare", [data_dir, os.path.join(work, "cache_byte"), ""])
    report({**byte, "mb_per_s": round(mb / byte["seconds"], 1)})
    bpe = child("prepare", [data_dir, os.path.join(work, "cache_bpe"), tokenizer])
    report({**bpe, "mb_per_s": round(mb / bpe["seconds"], 1)})
    limit = child("encode_limit", [data_dir, tokenizer])
    report({**limit, "limit_mb_per_s": round(mb / limit["encode_seconds"], 1)})
    sampler = child("sampler_rate", [os.path.join(work, "cache_bpe")])
    needed = tpu_step_rows_per_s()
    report({**sampler, "v5e_step_rows_per_s_at_peak": round(needed), "margin": round(
        sampler["sampler_rows_per_s"] / needed, 1)})
    report({"summary": "preparation", "bpe_fraction_of_limit": round(limit["encode_seconds"] / bpe["seconds"], 3),
            "peak_rss_mb": max(byte["peak_rss_mb"], bpe["peak_rss_mb"]), "corpus_mb": a.size_mb,
            "cpu_count": os.cpu_count(), "work": work})


if __name__ == "__main__":
    main()
