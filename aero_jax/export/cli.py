"""The console commands of the export package: aero-export and aero-import-hf (argument parsing only).

    aero-export --workdir W --out DIR [--step N] [--format auto|hf|torch] [--dtype float32|bfloat16] [--overwrite]
    aero-import-hf --checkpoint DIR --workdir W

What they do is `to_pytorch` and `from_hf` of the package (aero_jax/export/__init__.py); see docs/export.md.
"""

from __future__ import annotations

import argparse

from aero_jax.errors import argparse_main
from aero_jax.export import from_hf, to_pytorch


def _export_command(args) -> None:
    result = to_pytorch(args.workdir, args.out, step=args.step, layout=args.format, dtype=args.dtype,
                        overwrite=args.overwrite)
    print(f"exported {result['architecture']} (step {result['step']}, {result['dtype']}) as {result['format']} "
          f"to {result['out']}")


def export_main(argv=None):
    """aero-export: a run's checkpoint as PyTorch / Hugging Face files (`to_pytorch`)."""
    parser = argparse.ArgumentParser(prog="aero-export", description="A trained run as PyTorch / Hugging Face files.")
    parser.add_argument("--workdir", required=True, help="the run directory written by aero-train")
    parser.add_argument("--out", required=True, help="the directory to write (must not exist without --overwrite)")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint step (default: the newest)")
    parser.add_argument("--format", default="auto", help="auto | hf (GPT2LMHeadModel) | torch (modeling_aero.py)")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    argparse_main("aero-export", parser, _export_command, argv)


def _import_command(args) -> None:
    result = from_hf(args.checkpoint, args.workdir)
    print(f"imported a {result['num_layers']}-layer GPT-2 (d_model {result['d_model']}, vocabulary "
          f"{result['vocab_size']}) as an {result['architecture']} run: {result['workdir']}")


def import_main(argv=None):
    """aero-import-hf: a Hugging Face GPT-2 directory as a run (`from_hf`)."""
    parser = argparse.ArgumentParser(prog="aero-import-hf", description="A Hugging Face GPT-2 as an aero-jax run.")
    parser.add_argument("--checkpoint", required=True, help="a GPT-2 directory: config.json, model.safetensors, "
                                                            "tokenizer.json")
    parser.add_argument("--workdir", required=True, help="the run directory to create")
    argparse_main("aero-import-hf", parser, _import_command, argv)
