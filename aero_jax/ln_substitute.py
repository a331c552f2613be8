"""The inference-time LayerNorm substitute (method file, section 9): calibrate, freeze, fold, report.

A LayerNorm is gamma (x - mean(x)) / s(x) + beta with a per-token scale s(x). Calibration
replaces s(x) by its mean over a calibration set (one constant per site); what is left is the
linear map x -> (x C) diag(gamma / s) + beta, C = I - 11^T / d, which folds into the next linear
layer: LN1 into the query, key and value kernels, LN2 into the FFN's first (or fused) kernel.
The final LayerNorm stays as that explicit linear map, since the LM head is tied to the input
embedding. None of it is a nonlinear operation in private inference.

    aero-ln-substitute --workdir W [--calibration-batches 8] [--finetune-steps 0]
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from aero_jax import data
from aero_jax.config import NORM_GROUPS, ConfigError, ModelConfig
from aero_jax.errors import argparse_main
from aero_jax.evaluate import restore_run, run_data, run_evaluation, run_evaluation_rows
from aero_jax.layers import LN_CALIBRATION, LN_STD_NAME
from aero_jax.model import AeroLM
from aero_jax.optim import adamw
from aero_jax.pi.cost import pi_cost
from aero_jax.run_config import architecture_label
from aero_jax.train_step import TrainState, jit_train_step
from aero_jax.workdir import make_output_folder


def _sites(c: ModelConfig):
    """(path, LayerNorm name) of every LayerNorm in the model."""
    for layer in range(c.num_layers):
        if c.ln_attn:
            yield (f"block_{layer}",), "ln_attn"
        if c.ln_ffn and c.has_ffn(layer):
            yield (f"block_{layer}",), "ln_ffn"
    if c.ln_final:
        yield (), "ln_final"


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def calibrate(model: AeroLM, params, rows_NxT: np.ndarray, *, batch_size: int, batches: int,
              model_state=None) -> dict:
    """The `ln_calibration` collection: each site's mean per-token scale over the calibration rows."""
    c = model.config
    if c.ln_frozen or not (c.ln_attn or c.ln_ffn or c.ln_final):
        raise ConfigError("the model has no LayerNorm to substitute; accepted: a model trained with LayerNorm")
    state = model_state or {}
    apply = jax.jit(lambda p, t: model.apply({"params": p, **state}, t, mutable=["intermediates"])[1][
        "intermediates"])
    count = min(batches, len(rows_NxT) // batch_size)
    if count < 1:
        raise ConfigError(f"{len(rows_NxT)} calibration rows are fewer than one batch of {batch_size}")
    sums: Dict = {}
    for i in range(count):
        sown = apply(params, jnp.asarray(rows_NxT[i * batch_size:(i + 1) * batch_size], jnp.int32))
        for path, name in _sites(c):
            key = path + (name,)
            sums[key] = sums.get(key, 0.0) + float(_at(sown, key)[LN_STD_NAME][0])
    calibration: Dict = {}
    for key, total in sums.items():
        node = calibration
        for part in key:
            node = node.setdefault(part, {})
        node["std"] = jnp.asarray(total / count, jnp.float32)
    return calibration


def _fold_kernel(kernel_DxO, bias_O, scale_D, beta_D, std):
    """Fold x -> (x C) diag(gamma / std) + beta into the linear layer (kernel, bias) after it."""
    scaled = (scale_D / std)[:, None] * kernel_DxO
    folded = scaled - jnp.mean(scaled, axis=0, keepdims=True)  # C is symmetric: C @ scaled
    return folded, bias_O + beta_D @ kernel_DxO


def fold(config: ModelConfig, params, calibration) -> tuple:
    """(config, params, calibration) of the folded model: LN1 and LN2 gone, the final one frozen."""
    if config.weight_norm or config.spectral_norm:
        raise ConfigError("weight_norm or spectral_norm is invalid with folding; accepted: plain linear layers")
    params = jax.tree_util.tree_map(lambda x: x, params)  # a copy we may edit
    bias_groups = tuple(g for g in NORM_GROUPS if g in config.bias_groups or g in FOLD_GROUPS)
    _add_zero_biases(params, [g for g in bias_groups if g not in config.bias_groups])
    for path, name in _sites(config):
        if name == "ln_final":
            continue
        block = _at(params, path)
        ln = block.pop(name)
        std = _at(calibration, path + (name,))["std"]
        attention = ("qk", "value") if config.qk_fused else ("query", "key", "value")
        targets = [block["attn"][k] for k in attention] if name == "ln_attn" else \
            [block["ffn"]["fused" if config.ffn_fused else "fc_in"]]
        for layer in targets:
            layer["kernel"], layer["bias"] = _fold_kernel(layer["kernel"], layer["bias"], ln["scale"], ln["bias"], std)
    folded_config = config.replace(ln_attn=False, ln_ffn=False, ln_frozen=True, bias_groups=bias_groups)
    folded_calibration = {"ln_final": calibration["ln_final"]} if config.ln_final else {}
    return folded_config, params, folded_calibration


# The groups whose layers receive a folded LayerNorm's shift as a bias; Linear modules by group.
FOLD_GROUPS = ("qk", "v", "ffn")
_GROUP_MODULES = {"qk": ("query", "key", "qk"), "v": ("value",), "o": ("out",), "ffn": ("fc_in", "fc_out", "fused")}


def _add_zero_biases(params, groups) -> None:
    """Give every linear layer of `groups` a zero bias (the released blocks train none outside QK)."""
    modules = {m for g in groups for m in _GROUP_MODULES[g]}

    def visit(tree):
        for name, child in tree.items():
            if isinstance(child, dict):
                if name in modules and "kernel" in child and "bias" not in child:
                    child["bias"] = jnp.zeros(child["kernel"].shape[-1:], child["kernel"].dtype)
                visit(child)

    visit(params)


def _collections(model_state, calibration):
    return {**model_state, **({LN_CALIBRATION: calibration} if calibration else {})}


def finetune(model: AeroLM, params, model_state, train_rows: np.ndarray, *, steps: int, lr: float, seed: int,
             batch_size: int):
    """(params, model_state) after `steps` steps of AdamW at a constant `lr` on the training rows: the
    substitute's short fine-tune, and the same steps for the LayerNorm model it is compared with."""
    tuner = adamw(lr, weight_decay=0.0)
    params, model_state = jax.tree_util.tree_map(jnp.array, (params, model_state))  # copies: the step donates them
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                       opt_state=tuner.init(params), lr_scale=jnp.ones((), jnp.float32))
    step = jit_train_step(model, tuner)
    for s in range(steps):
        indices = data.batch_indices(seed + 1, s, batch_size, len(train_rows))
        state, _ = step(state, jnp.asarray(train_rows[indices], jnp.int32))
    return state.params, state.model_state


def substitute_report(workdir: str, *, calibration_batches: int = 8, finetune_steps: int = 0,
                      finetune_lr: float = 1e-4) -> dict:
    """Perplexity with LayerNorm, with the calibrated substitute, folded, after fine-tuning the substitute (and,
    for a fair comparison, of the LayerNorm model after the same fine-tune); and the PI cost. Every perplexity is
    the run's own evaluation (its summary's rows)."""
    run = restore_run(workdir)
    config, model = run.config, run.model
    label = architecture_label(config.model)
    params, model_state = run.state.params, run.state.model_state
    train_rows, val_rows = run_data(config, model.config.max_len)

    def perplexity(params, model_state, model) -> float:
        return run_evaluation(run, val_rows, params, model_state, model)["perplexity"]

    calibration = calibrate(model, params, train_rows, batch_size=config.train.eval_batch_size,
                            batches=calibration_batches, model_state=model_state)
    frozen = AeroLM(model.config.replace(ln_frozen=True))
    folded_config, folded_params, folded_calibration = fold(model.config, params, calibration)
    result = {
        "workdir": workdir, "architecture": label, "step": run.step,
        "validation_rows": run_evaluation_rows(run, val_rows),
        "perplexity_with_layernorm": perplexity(params, model_state, model),
        "perplexity_substitute": perplexity(params, {**model_state, LN_CALIBRATION: calibration}, frozen),
        "perplexity_folded": perplexity(folded_params, _collections(model_state, folded_calibration),
                                        AeroLM(folded_config)),
        "pi_cost_with_layernorm": pi_cost(model.config, name=label),
        "pi_cost_substitute": pi_cost(folded_config, name=f"{label}, LN substitute"),
    }
    if finetune_steps > 0:
        tune = functools.partial(finetune, train_rows=train_rows, steps=finetune_steps, lr=finetune_lr,
                                 seed=config.seed, batch_size=config.train.batch_size)
        result["finetune_steps"] = finetune_steps
        result["perplexity_substitute_finetuned"] = perplexity(
            *tune(frozen, params, {**model_state, LN_CALIBRATION: calibration}), frozen)
        result["perplexity_with_layernorm_finetuned"] = perplexity(*tune(model, params, model_state), model)
    return result


def _run(args) -> None:
    if args.calibration_batches < 1 or args.finetune_steps < 0 or not 0 < args.finetune_lr < float("inf"):
        raise ConfigError(f"--calibration-batches={args.calibration_batches}, --finetune-steps={args.finetune_steps}, "
                          f"--finetune-lr={args.finetune_lr} are invalid; accepted: >= 1, >= 0, a positive number")
    folder = args.out or args.workdir
    make_output_folder(folder, flag="--out")
    result = substitute_report(args.workdir, calibration_batches=args.calibration_batches,
                               finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr)
    out = epath.Path(folder) / f"ln_substitute_cal{args.calibration_batches}_ft{args.finetune_steps}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("pi_cost")}, indent=2))
    print(f"written: {out}")
    for key in ("pi_cost_with_layernorm", "pi_cost_substitute"):
        cost = result[key]
        print(f"{cost['arch']}: {cost['nonlinear_ops']}; {cost['comm_gb']:.3f} GB, {cost['latency_min']:.3f} min")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="aero-ln-substitute", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default="", help="folder for the JSON report (default: the workdir)")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--finetune-steps", type=int, default=0)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    argparse_main("aero-ln-substitute", parser, _run, argv)


if __name__ == "__main__":
    main()
