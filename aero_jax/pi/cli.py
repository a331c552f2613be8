"""aero-pi-cost: the private-inference cost of an architecture at a size, or the papers' table.

    aero-pi-cost --preset "EReg(SM(t)+ScFuFFN)" --seq-len 256 [--json]
    aero-pi-cost --preset sm_scfuffn --layers 18 --ffn-layers 6
    aero-pi-cost --paper-table
"""

from __future__ import annotations

import argparse
import json

from aero_jax import presets
from aero_jax.config import ConfigError
from aero_jax.errors import argparse_main
from aero_jax.pi.cost import load_coefficients, pi_cost
from aero_jax.pi.fit import calibration_rows, fit_errors

SIZE_FLAGS = (("layers", "num_layers"), ("heads", "num_heads"), ("d_model", "d_model"), ("d_ff", "d_ff"),
              ("vocab", "vocab_size"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aero-pi-cost", description=__doc__.splitlines()[0])
    p.add_argument("--preset", help="a preset name or its slug (see aero_jax.presets.names())")
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--d-model", type=int)
    p.add_argument("--d-ff", type=int, help="FFN width (default 4 x d-model when --d-model is given)")
    p.add_argument("--vocab", type=int)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--ffn-layers", type=int, help="how many leading layers keep an FFN")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--paper-table", action="store_true", help="the published rows next to the model's fit")
    return p


def config_from_args(args):
    name = presets.resolve(args.preset)
    overrides = {field: getattr(args, flag) for flag, field in SIZE_FLAGS if getattr(args, flag) is not None}
    if args.d_model is not None and args.d_ff is None:
        overrides["d_ff"] = 4 * args.d_model
    overrides["max_len"] = args.seq_len
    config = presets.model_config(name, **overrides)
    if args.ffn_layers is not None:
        if not 0 <= args.ffn_layers <= config.num_layers:
            raise ConfigError(f"--ffn-layers={args.ffn_layers} is invalid; accepted: 0..{config.num_layers}")
        config = config.replace(ffn_layers=tuple(range(args.ffn_layers)))
    return name, config


def _text(report: dict) -> str:
    return "\n".join([
        f"{report['arch']}  L={report['num_layers']} H={report['num_heads']} d={report['d_model']} "
        f"d_ff={report['d_ff']} V={report['vocab_size']} T={report['seq_len']}",
        f"  nonlinear ops: {report['nonlinear_ops']}",
        f"  FLOPs: FFN {report['ffn_flops'] / 1e9:.2f}B, attention {report['attn_flops'] / 1e9:.2f}B, "
        f"head {report['head_flops'] / 1e9:.2f}B",
        f"  communication {report['comm_gb']:.2f} GB, latency {report['latency_min']:.2f} min "
        f"(2PC SecretFlow model; SM+LN+G at this size: {report['baseline']['comm_gb']:.2f} GB, "
        f"{report['baseline']['latency_min']:.2f} min; savings {report['comm_saving']:.2f}x, "
        f"{report['latency_saving']:.2f}x)",
    ])


def paper_table() -> str:
    """The published rows next to the model: its fit, and its prediction when the row is held out."""
    coefficients = load_coefficients()
    lines = ["| arch | L | T | comm GB | model | error | held out | latency min | model | error | held out |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    held_out = coefficients["leave_one_out_errors"]
    for e, h in zip(fit_errors(calibration_rows(), coefficients), held_out):
        lines.append(f"| {e['arch']} | {e['num_layers']} | {e['seq_len']} | {e['comm_gb']:.2f} | "
                     f"{e['comm_gb_predicted']:.2f} | {e['comm_gb_error']:+.1%} | {h['comm_gb_error']:+.1%} | "
                     f"{e['latency_min']:.2f} | {e['latency_min_predicted']:.2f} | {e['latency_min_error']:+.1%} | "
                     f"{h['latency_min_error']:+.1%} |")
    return "\n".join(lines)


def _run(args) -> None:
    if args.paper_table:
        print(paper_table())
        return
    if not args.preset:
        raise ConfigError("--preset is required; accepted: a preset name or slug, or --paper-table")
    name, config = config_from_args(args)
    report = pi_cost(config, name=name)
    print(json.dumps(report) if args.json else _text(report))


def main(argv=None):
    argparse_main("aero-pi-cost", _parser(), _run, argv)


if __name__ == "__main__":
    main()
