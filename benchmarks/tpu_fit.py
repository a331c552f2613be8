"""What fits on TPU slices: GPT-2-small presets compiled here by aero-compile (libtpu, no TPU needed).

    .venv-tpu/bin/python benchmarks/tpu_fit.py --jobs 2            # compile what is missing, then the tables
    .venv-tpu/bin/python benchmarks/tpu_fit.py --tables-only       # the tables from the saved results

Every figure comes from `aero-compile --json` on configs/gpt2_codeparrot.py without gradient
accumulation. Per cell: the papers' batch of 512 sequences on an fsdp mesh over every chip; the
largest per-chip batch (a multiple of 8) on the line of XLA's peak through that compile and the
state's shard, shown as an estimate (~N), or compiled to check it with --check (halved until it
fits). Results accumulate in a JSON file (a rerun compiles only what is missing); the tables are
written into docs/scaling.md between its markers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys

from aero_jax import aot

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARCHITECTURES = {"sm_ln_g": "SM+LN+G", "sm_ln_r": "SM+LN+R", "sm_scfuffn": "SM+ScFuFFN",
                 "ereg_sm_t_scfuffn": "EReg(SM(t)+ScFuFFN)"}
PENALTY_PAIR = ("sm_t_scfuffn", "ereg_sm_t_scfuffn")  # the same architecture without and with EReg
CONTEXTS = (128, 256, 512)
SLICES = ("v4-8", "v5e-8", "v5p-8")  # aero-compile's slice names
BATCH = 512
PROBE = 8  # sequences a chip in the second compile
REMAT_SLICE, REMAT_CONTEXT = "v5e-8", 512
REMATS = ("none", "dots", "block")
MESH_COMPARED = ("sm_ln_g",)  # also compiled on a data-parallel mesh, at T=128
GiB = 2 ** 30
COMPILER_LIMIT = {"v5e-8": int(15.75 * GiB)}  # the HBM XLA said it can use when it refused a v5e batch
BEGIN, END = "<!-- tpu_fit tables: begin -->", "<!-- tpu_fit tables: end -->"


def key(arch: str, seq_len: int, slice_name: str, batch: int, mesh: str = "fsdp", remat: str = "none") -> str:
    return f"{arch},t={seq_len},{slice_name},batch={batch},{mesh},remat={remat}"


def compile_one(spec: str) -> dict:
    """aero-compile --json for one key; the train step's report, or the one line it failed with."""
    arch, context, slice_name, batch, mesh, remat = spec.split(",")
    mesh_flags = ["--config.mesh.data=1", "--config.mesh.fsdp=-1"] if mesh == "fsdp" else ["--config.mesh.data=-1"]
    command = [os.path.join(os.path.dirname(sys.executable), "aero-compile"),
               f"--config=configs/gpt2_codeparrot.py:{arch},{context}", f"--topology={slice_name}",
               "--steps=train", "--json", f"--config.train.batch_size={batch.split('=')[1]}",
               "--config.train.grad_accum_steps=1", f"--config.model.{remat}", *mesh_flags]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode not in (0, 1):
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output"}
    report = json.loads(result.stdout)
    return {**report["steps"]["train"], "devices": report["devices"], "mesh": report["mesh"]}


class Results:
    """The JSON file of compiled keys; written after every compile, so an interrupted run loses nothing."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def run(self, keys, jobs: int) -> None:
        missing = [k for k in dict.fromkeys(keys) if "error" in self.data.get(k, {"error": "not yet"})]
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for done, (k, result) in enumerate(zip(missing, pool.map(compile_one, missing)), 1):
                self.data[k] = result
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
                os.replace(tmp, self.path)
                shown = "error" if "error" in result else f"{result['total_bytes'] / GiB:.2f} GiB"
                print(f"[{done}/{len(missing)}] {k}: {shown} ({result.get('compile_s', 0):.0f} s)", flush=True)


def devices_of(slice_name: str) -> int:
    return aot.parse_topology(slice_name).chips  # one device a chip, as aero-compile compiles them


def line_estimate(results: Results, arch, seq_len, slice_name, remat="none") -> int | None:
    """The largest per-chip batch (a multiple of 8) under the HBM XLA can use, on a line of peak memory in the batch.

    The line goes through the compile at 8 sequences a chip when there is one; else through the arguments (the
    state's shard, which does not grow with the batch), or zero when XLA refused the batch and gave only a total.
    """
    n = devices_of(slice_name)
    full = results.data.get(key(arch, seq_len, slice_name, BATCH, remat=remat))
    if not full or "error" in full:
        return None
    probe = results.data.get(key(arch, seq_len, slice_name, PROBE * n, remat=remat))
    if probe and "error" not in probe:
        base_rows, base_bytes = PROBE, probe["total_bytes"]
    else:
        base_rows, base_bytes = 0, full["argument_bytes"] or 0
    per_row = (full["total_bytes"] - base_bytes) / (BATCH / n - base_rows)
    limit = full.get("compiler_limit_bytes") or COMPILER_LIMIT.get(slice_name, full["hbm_bytes"])
    return max(PROBE, int((limit - base_bytes) / per_row + base_rows) // 8 * 8)


def largest_fitting(results: Results, arch, seq_len, slice_name, remat="none") -> tuple[int | None, int | None]:
    """(the largest compiled per-chip batch that fits, the smallest compiled one that did not) on the halving path."""
    per_chip = line_estimate(results, arch, seq_len, slice_name, remat)
    n, refused = devices_of(slice_name), None
    while per_chip and per_chip >= PROBE:
        found = results.data.get(key(arch, seq_len, slice_name, per_chip * n, remat=remat))
        if found is None or "error" in found:
            return None, refused
        if found["fits"]:
            return per_chip, refused
        refused = per_chip
        per_chip = per_chip // 2 // 8 * 8
    return None, refused


def next_checks(results: Results, cells) -> list:
    """The compiles the largest-batch search still needs: the estimate, or the halving of one that did not fit."""
    keys = []
    for arch, seq_len, slice_name, remat in cells:
        per_chip, n = line_estimate(results, arch, seq_len, slice_name, remat), devices_of(slice_name)
        while per_chip and per_chip >= PROBE:
            k = key(arch, seq_len, slice_name, per_chip * n, remat=remat)
            if k not in results.data:
                keys.append(k)
                break
            if results.data[k].get("fits") or "error" in results.data[k]:
                break
            per_chip = per_chip // 2 // 8 * 8
    return keys


def _largest(results: Results, arch, seq_len, slice_name, remat="none") -> str:
    """The compiled largest batch (and the refused one above it), else the line's estimate (~), else '-'."""
    checked, refused = largest_fitting(results, arch, seq_len, slice_name, remat)
    if checked is not None:
        return str(checked) if refused is None else f"{checked} ({refused}: no)"
    estimate = line_estimate(results, arch, seq_len, slice_name, remat)
    return "-" if estimate is None else f"~{estimate}"


def _gib(r: dict | None) -> str:
    if not r or "error" in r:
        return "-"
    return f"{r['total_bytes'] / GiB:.2f}" + ("" if r["fits"] else " (no)")


def tables(results: Results, cells) -> str:
    d = results.data
    lines = [f"Per-chip memory (XLA's peak, GiB) of the train step at the papers' batch of {BATCH} sequences on "
             f"an fsdp mesh over every chip, and the largest batch per chip that fits without accumulation "
             f"(a number: the estimate on a line of XLA's peak in the batch, compiled and fits, so at least that "
             f"many fit; \"40 (80: no)\": the estimate of 80 was refused and its half fits; ~N: estimated, not "
             f"compiled). \"(no)\": XLA refused the batch; the figure is what it asked for.", "",
             "| architecture | T | " + " | ".join(f"{s}: GiB at {BATCH} | {s}: largest/chip" for s in SLICES) + " |",
             "|---|---|" + "---|---|" * len(SLICES)]
    for arch, name in ARCHITECTURES.items():
        for t in CONTEXTS:
            row = []
            for s in SLICES:
                row += [_gib(d.get(key(arch, t, s, BATCH))), _largest(results, arch, t, s)]
            lines.append(f"| {name} | {t} | " + " | ".join(row) + " |")
    lines += ["", f"Data-parallel against fsdp on {REMAT_SLICE} at T=128, {BATCH} sequences (GiB per chip):", "",
              "| architecture | data | fsdp |", "|---|---|---|"]
    for arch in MESH_COMPARED:
        lines.append(f"| {ARCHITECTURES[arch]} | {_gib(d.get(key(arch, 128, REMAT_SLICE, BATCH, mesh='data')))} | "
                     f"{_gib(d.get(key(arch, 128, REMAT_SLICE, BATCH)))} |")
    lines += ["", "The entropy penalty's memory at T=512: EReg(SM(t)+ScFuFFN) against SM(t)+ScFuFFN, the same "
              "architecture without it (both compute the entropy as a diagnostic), GiB per chip:", "",
              "| slice | sequences a chip | temps without | temps with EReg | EReg adds | peak without | peak with "
              "EReg | EReg adds |", "|---|---|---|---|---|---|---|---|"]
    for s in SLICES:
        for batch in (PROBE * devices_of(s), BATCH):
            plain, ereg = (d.get(key(a, 512, s, batch)) for a in PENALTY_PAIR)
            if not all(r and "error" not in r and r["fits"] for r in (plain, ereg)):
                continue
            lines.append(f"| {s} | {batch // devices_of(s)} | {plain['temp_bytes'] / GiB:.2f} | "
                         f"{ereg['temp_bytes'] / GiB:.2f} | {ereg['temp_bytes'] / plain['temp_bytes'] - 1:+.1%} | "
                         f"{plain['total_bytes'] / GiB:.2f} | {ereg['total_bytes'] / GiB:.2f} | "
                         f"{ereg['total_bytes'] / plain['total_bytes'] - 1:+.1%} |")
    lines += ["", f"Rematerialisation (`model.remat`), EReg(SM(t)+ScFuFFN) at T={REMAT_CONTEXT} on {REMAT_SLICE}, "
              f"{PROBE} sequences a chip; memory on the fsdp mesh, XLA's FLOPs on the data mesh (fsdp's gathering "
              f"loops hide FLOPs from its count):", "",
              "| remat | temps GiB | peak GiB | XLA TFLOP per chip | FLOPs vs none | largest batch/chip |",
              "|---|---|---|---|---|---|"]
    n = devices_of(REMAT_SLICE)
    flops_of = {r: d.get(key("ereg_sm_t_scfuffn", REMAT_CONTEXT, REMAT_SLICE, PROBE * n, mesh="data", remat=r))
                for r in REMATS}
    for remat in REMATS:
        r = d.get(key("ereg_sm_t_scfuffn", REMAT_CONTEXT, REMAT_SLICE, PROBE * n, remat=remat))
        f, base = flops_of[remat], flops_of["none"]
        if not r or "error" in r or not f or not base or "error" in f or "error" in base:
            continue
        largest = _largest(results, "ereg_sm_t_scfuffn", REMAT_CONTEXT, REMAT_SLICE, remat)
        lines.append(f"| {remat} | {r['temp_bytes'] / GiB:.2f} | {r['total_bytes'] / GiB:.2f} | "
                     f"{f['xla_flops'] / 1e12:.2f} | {f['xla_flops'] / base['xla_flops']:.3f}x | {largest} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "tpu_fit.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "scaling.md"))
    parser.add_argument("--jobs", type=int, default=2, help="compiles at once (each takes one core)")
    parser.add_argument("--tables-only", action="store_true")
    parser.add_argument("--check", action="store_true", help="also compile each estimated largest batch (halving "
                        "it until it fits)")
    args = parser.parse_args()
    results = Results(pathlib.Path(args.results))
    results.path.parent.mkdir(parents=True, exist_ok=True)
    cells = [(a, t, s, "none") for a in ARCHITECTURES for t in CONTEXTS for s in SLICES]
    remat_cells = [("ereg_sm_t_scfuffn", REMAT_CONTEXT, REMAT_SLICE, r) for r in REMATS[1:]]
    if not args.tables_only:
        # Most telling first: the papers' batch everywhere, then the penalty and remat figures.
        first = [key(a, t, s, BATCH, remat=r) for a, t, s, r in cells + remat_cells]
        first += [key(a, 512, s, b) for a in PENALTY_PAIR for s in SLICES for b in (PROBE * devices_of(s), BATCH)]
        first += [key(a, t, s, PROBE * devices_of(s), remat=r) for a, t, s, r in remat_cells]
        first += [key(a, 128, REMAT_SLICE, BATCH, mesh="data") for a in MESH_COMPARED]
        first += [key("ereg_sm_t_scfuffn", REMAT_CONTEXT, REMAT_SLICE, PROBE * devices_of(REMAT_SLICE), mesh="data",
                      remat=r) for r in REMATS]
        results.run(first, args.jobs)
        if args.check:
            while True:
                checks = next_checks(results, cells + remat_cells)
                if not checks:
                    break
                results.run(checks, args.jobs)
    text = tables(results, cells)
    print(text)
    doc = pathlib.Path(args.doc)
    body = doc.read_text()
    if BEGIN in body:
        head, _, rest = body.partition(BEGIN)
        doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.partition(END)[2]}")


if __name__ == "__main__":
    main()
