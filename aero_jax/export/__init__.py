"""A trained run out of JAX (PyTorch, Hugging Face) and a Hugging Face GPT-2 into a run.

`to_pytorch` folds the run's checkpoint into plain tensors (fold.py) and writes a self-contained
directory: model.safetensors, config.json, the tokenizer, a README.md model card, and either the
stock GPT2LMHeadModel layout (`hf`, for what GPT-2 can express, hf.py) or the AERO layout with
modeling_aero.py beside it (`torch`). Only safetensors is needed to write it; torch to read it.
`from_hf` makes a run of a GPT-2 checkpoint. The commands aero-export and aero-import-hf live in cli.py; see
docs/export.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import json
import os
import shutil
import socket
from importlib import resources
from typing import Dict, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
from etils import epath
from safetensors.numpy import load_file, save_file

from aero_jax import data
from aero_jax.checkpoint import Checkpointer
from aero_jax.config import ConfigError, ModelConfig
from aero_jax.data.cache import follow_umask
from aero_jax.evaluate import other_step_hint, restore_run
from aero_jax.export import fold, hf
from aero_jax.pi.cost import pi_cost
from aero_jax.run_config import architecture_label, base_config, model_config_from, validate
from aero_jax.run_log import metric_series
from aero_jax.train_step import create_train_state
from aero_jax.trainer import CONFIG_FILE, build
from aero_jax.workdir import write_text_atomically

FORMATS = ("auto", "hf", "torch")
DTYPES = ("float32", "bfloat16")
WEIGHTS_FILE = "model.safetensors"
EXTRAS_FILE = "training_extras.safetensors"
MODELING_FILE = "modeling_aero.py"
BYTE_TOKENIZER_FILE = "byte_tokenizer.json"
EXPORT_FILES = (WEIGHTS_FILE, EXTRAS_FILE, MODELING_FILE, BYTE_TOKENIZER_FILE, "config.json", "tokenizer.json",
                "README.md", "__pycache__")  # what an export writes (and Python's cache of modeling_aero.py)


def _choose_format(requested: str, c: ModelConfig) -> str:
    blocker = hf.gpt2_blocker(c)
    if requested == "hf" and blocker:
        raise ConfigError(f"--format hf cannot express this model: {blocker}; accepted: --format torch (or auto)")
    if requested == "auto":
        return "torch" if blocker else "hf"
    return requested


def check_replaceable(out: str, *, overwrite: bool, flag: str = "--out", protect: str = "") -> None:
    """Refuse an OUT that exists (unless `overwrite` and it holds a previous export and nothing else) or that
    holds `protect`."""
    out, protect = os.path.abspath(out), os.path.abspath(protect) if protect else ""
    if protect and (protect == out or protect.startswith(out + os.sep)):
        raise ConfigError(f"{flag}={out} holds the run {protect}; accepted: a folder outside the run")
    if not os.path.exists(out):
        return
    if not overwrite:
        raise ConfigError(f"{flag}={out} already exists; accepted: a new folder, or --overwrite to replace an export")
    if not all(os.path.isfile(os.path.join(out, name)) for name in (WEIGHTS_FILE, "config.json")):
        raise ConfigError(f"{flag}={out} is not an export (no {WEIGHTS_FILE} and config.json); accepted: --overwrite "
                          f"of a folder aero-export wrote, or a new folder")
    foreign = sorted(set(os.listdir(out)) - set(EXPORT_FILES))
    if foreign:
        raise ConfigError(f"{flag}={out} also holds {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}, "
                          f"which --overwrite would delete; accepted: a folder that holds only an export, or a new "
                          f"folder")


@contextlib.contextmanager
def staged_directory(out: str, *, replace: bool, flag: str) -> Iterator[str]:
    """A temporary sibling of OUT to write into, renamed to OUT only when everything is written. With `replace`, an
    existing OUT (see check_replaceable) is replaced only then, and put back if that rename fails; without it, an
    OUT that another process wrote meanwhile is refused, never replaced."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot write to {parent} ({error.strerror}); accepted: a writable folder") from error
    writer = f"{socket.gethostname()}-{os.getpid()}"  # a folder shared by hosts: only this host's are judged here
    staging, previous = f"{out}.partial-{writer}", f"{out}.previous-{writer}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        yield staging
        if replace and os.path.exists(out):
            os.rename(out, previous)
            try:
                os.rename(staging, out)
            except BaseException:  # a failed rename or a Ctrl-C between the two: the previous OUT goes back
                os.rename(previous, out)
                raise
            shutil.rmtree(previous)
        else:
            _rename_to_new(staging, out, flag)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _rename_to_new(staging: str, out: str, flag: str) -> None:
    try:
        os.rename(staging, out)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        raise ConfigError(f"{flag}={out} was written by another process meanwhile and is kept; accepted: a new "
                          f"folder") from error


def clean_after_dead_writers(out: str) -> None:
    """What a killed writer of OUT on this host left: its staging folder is removed, and a previous OUT it had moved
    aside (and not yet replaced) is put back."""
    out = os.path.abspath(out)
    for leftover in sorted(glob.glob(f"{glob.escape(out)}.partial-*") + glob.glob(f"{glob.escape(out)}.previous-*")):
        kind, _, writer = leftover[len(out) + 1:].partition("-")
        host, _, pid = writer.rpartition("-")
        if host != socket.gethostname() or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "previous" and not os.path.exists(out):
            os.rename(leftover, out)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def save_tensors(tensors: Dict[str, np.ndarray], path: str, dtype: str) -> None:
    """safetensors in `dtype`; learned temperatures and scalars (fold.FLOAT32_TENSORS) stay float32."""
    if dtype == "bfloat16":
        tensors = {k: v if k.rsplit(".", 1)[-1] in fold.FLOAT32_TENSORS else v.astype(ml_dtypes.bfloat16)
                   for k, v in tensors.items()}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata={"format": "pt"})
    follow_umask(path)  # safetensors writes 0600


def aero_config(c: ModelConfig, provenance: dict, *, eot_id: Optional[int] = None) -> dict:
    """config.json of the AERO layout: the architecture modeling_aero.py builds, where it came from, and the
    tokenizer's end-of-text id as bos, eos and pad id (as GPT-2's config has it; null when not known), so that
    generate stops at end of text and transformers can warn about padding."""
    return dict(
        model_type="aero", architectures=["AeroForCausalLM"],
        auto_map={"AutoConfig": "modeling_aero.AeroConfig", "AutoModelForCausalLM": "modeling_aero.AeroForCausalLM"},
        vocab_size=c.vocab_size, max_len=c.max_len, num_layers=c.num_layers, num_heads=c.num_heads,
        d_model=c.d_model, d_ff=c.d_ff, ffn_layers=[l for l in range(c.num_layers) if c.has_ffn(l)],
        ffn_fused=c.ffn_fused, activation="leaky_relu" if "leaky" in c.activation else c.activation,
        gelu_form=c.gelu_form, ln_attn=c.ln_attn, ln_ffn=c.ln_ffn, ln_final=c.ln_final,
        ln_mode="centered_affine" if c.ln_frozen else "layernorm", ln_epsilon=c.ln_epsilon,
        learnable_temperature=c.learnable_temperature, residual_scale=c.ffn_scaling, tie_word_embeddings=True,
        bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id, aero=provenance)


def _write_tokenizer(tokenizer, out: str) -> None:
    """The run's tokenizer beside the weights: its BPE tokenizer.json, or a description of the byte one."""
    if tokenizer.kind == "bpe":
        shutil.copyfile(tokenizer.path, os.path.join(out, "tokenizer.json"))
        return
    description = {"kind": "byte", "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id,
                   "description": f"UTF-8 bytes are the ids 0-255; {tokenizer.eot_id} is end-of-text"}
    with open(os.path.join(out, BYTE_TOKENIZER_FILE), "w") as f:
        json.dump(description, f, indent=1)


def model_card(c: ModelConfig, provenance: dict, layout: str) -> str:
    """README.md of an export: what the model is, how it was trained, what it costs in private inference."""
    cost = pi_cost(c, name=provenance["architecture"])
    perplexity = provenance.get("validation_perplexity")
    loader = ("from transformers import GPT2LMHeadModel\nmodel = GPT2LMHeadModel.from_pretrained(DIR)"
              if layout == "hf" else "import sys; sys.path.insert(0, DIR)\nfrom modeling_aero import AeroForCausalLM\n"
                                     "model = AeroForCausalLM.from_pretrained(DIR)")
    return "\n".join([
        f"# {provenance['architecture']}, exported by aero-jax", "",
        f"- Trained for {provenance['step']} steps in `{provenance['workdir']}`; validation perplexity "
        f"{'not recorded at that step' if perplexity is None else f'{perplexity:.3f}'}.",
        f"- Size: {c.num_layers} layers, {c.num_heads} heads, d_model {c.d_model}, d_ff {c.d_ff}, vocabulary "
        f"{c.vocab_size}, context {c.max_len}.",
        f"- Layout: `{layout}` ({'GPT2LMHeadModel' if layout == 'hf' else 'modeling_aero.py'}), "
        f"{provenance['dtype']}.",
        f"- Private inference (aero-pi-cost, T={c.max_len}): nonlinear operations {cost['nonlinear_ops']}; "
        f"{cost['comm_gb']:.3f} GB of communication and {cost['latency_min']:.3f} min of latency per sequence, "
        f"{cost['comm_saving']:.2f}x less communication than SM+LN+G of the same size.", "",
        "```python", loader, "```", ""])


def to_pytorch(workdir: str, out: str, *, step: Optional[int] = None, layout: str = "auto", dtype: str = "float32",
               overwrite: bool = False) -> dict:
    """Export a run's checkpoint (newest, or `step`) to OUT in a layout (auto, hf, torch); returns what was written."""
    if layout not in FORMATS:
        raise ConfigError(f"--format={layout} is invalid; accepted: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype={dtype} is invalid; accepted: {', '.join(DTYPES)}")
    clean_after_dead_writers(out)
    check_replaceable(out, overwrite=overwrite, protect=workdir)  # before any work: nothing is read or written
    run = restore_run(workdir, step)
    c = model_config_from(run.config.model)
    layout = _choose_format(layout, c)
    tokenizer = data.make_tokenizer(run.config.data.tokenizer, run.config.data.tokenizer_path or None)
    data.check_vocab(tokenizer, c.vocab_size)
    plain = fold.plain_tensors(c, run.state.params, run.state.model_state)
    broken = [name for name, value in plain.items() if not np.all(np.isfinite(value))]
    if broken:
        raise ConfigError(f"checkpoint {run.step} of {workdir} folds to non-finite values in {', '.join(broken[:3])} "
                          f"(a zero spectral norm or LayerNorm scale); accepted: another checkpoint"
                          f"{other_step_hint(run.steps, run.step)}")
    provenance = {"architecture": architecture_label(run.config.model), "preset": run.config.model.preset,
                  "workdir": workdir, "step": run.step, "dtype": dtype,
                  "validation_perplexity": validation_perplexity_at(workdir, run.step)}
    with staged_directory(out, replace=overwrite, flag="--out") as staging:
        if layout == "hf":
            save_tensors(hf.gpt2_tensors(plain, c), os.path.join(staging, WEIGHTS_FILE), dtype)
            config = {**hf.gpt2_config(c, eot_id=tokenizer.eot_id), "aero": provenance}
        else:
            save_tensors(plain, os.path.join(staging, WEIGHTS_FILE), dtype)
            config = aero_config(c, provenance, eot_id=tokenizer.eot_id)
            shutil.copyfile(resources.files("aero_jax.export") / MODELING_FILE, os.path.join(staging, MODELING_FILE))
        config["torch_dtype"] = dtype
        with open(os.path.join(staging, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
        extras = fold.training_extras(c, run.state.params)
        if extras:
            save_tensors(extras, os.path.join(staging, EXTRAS_FILE), "float32")
        _write_tokenizer(tokenizer, staging)
        with open(os.path.join(staging, "README.md"), "w") as f:
            f.write(model_card(c, provenance, layout))
    return {"out": os.path.abspath(out), "format": layout, "step": run.step, "dtype": dtype,
            "architecture": provenance["architecture"]}


def validation_perplexity_at(workdir: str, step: int) -> Optional[float]:
    """The validation perplexity the run logged at `step` (its newest evaluation there), or None."""
    return dict(zip(*metric_series(workdir, "eval", "perplexity"))).get(step)  # a later record of a step wins


# -- import ---------------------------------------------------------------------------------------

def _read_gpt2_directory(checkpoint: str):
    """(config.json as a dict, tensors) of a Hugging Face GPT-2 checkpoint directory (safetensors only)."""
    config_path, weights_path = (os.path.join(checkpoint, name) for name in ("config.json", WEIGHTS_FILE))
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise ConfigError(f"--checkpoint={checkpoint} has no {os.path.basename(path)}; accepted: a Hugging Face "
                              f"GPT-2 directory with config.json and model.safetensors (never a pickle)")
    try:
        with open(config_path) as f:
            hf_config = json.load(f)
        tensors = load_file(weights_path)
        if not isinstance(hf_config, dict):
            raise ValueError("config.json holds no JSON object")
    except Exception as error:  # bad JSON, a truncated or foreign safetensors file
        raise ConfigError(f"--checkpoint={checkpoint} cannot be read ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}); accepted: a Hugging Face GPT-2 "
                          f"directory with config.json and model.safetensors") from error
    return hf_config, tensors


def _check_finite(tensors: Mapping[str, np.ndarray], checkpoint: str) -> None:
    """Refuse a checkpoint with NaN or infinite weights, naming the first such tensor."""
    for name, value in tensors.items():
        if value.dtype.kind not in "biu" and not np.all(np.isfinite(value.astype(np.float32, copy=False))):
            raise ConfigError(f"--checkpoint={checkpoint}: tensor {name} holds non-finite values (NaN or inf); "
                              f"accepted: a checkpoint whose weights are all finite")


def from_hf(checkpoint: str, workdir: str, *, data_section: Optional[Mapping] = None) -> dict:
    """A GPT-2 checkpoint directory as an SM+LN+G (or +R) run directory (config.json, tokenizer.json, checkpoint at
    step 0) that aero-eval, aero-ln-substitute and aero-train (configs/from_workdir.py) accept.

    `data_section` changes the run's data fields (default: the embedded dataset, read with the GPT-2 tokenizer).
    """
    clean_after_dead_writers(workdir)
    hf_config, tensors = _read_gpt2_directory(checkpoint)
    _check_finite(tensors, checkpoint)
    preset, c = hf.model_config_from_gpt2(hf_config, f"--checkpoint={checkpoint}")
    params = jax.tree_util.tree_map(jnp.asarray, hf.gpt2_to_params(tensors, c, f"--checkpoint={checkpoint}"))
    tokenizer_source = os.path.join(checkpoint, "tokenizer.json")
    byte_level = os.path.isfile(os.path.join(checkpoint, BYTE_TOKENIZER_FILE))  # an aero-export of a byte run
    if not (os.path.isfile(tokenizer_source) or byte_level):
        raise ConfigError(f"--checkpoint={checkpoint} has no tokenizer.json; accepted: a GPT-2 directory with its "
                          f"tokenizer (evaluation and fine-tuning read text through it)")
    if os.path.exists(workdir):
        raise ConfigError(f"--workdir={workdir} already exists; accepted: a new folder")
    config = base_config()
    config.model = ml_collections.ConfigDict({"preset": preset, **dataclasses.asdict(c), "ffn_layers": None})
    tokenizer_path = os.path.join(os.path.abspath(workdir), "tokenizer.json")
    if not byte_level:
        config.data.update(tokenizer="bpe", tokenizer_path=tokenizer_path)
    config.data.update(dict(data_section or {}))
    validate(config)
    data.check_vocab(data.make_tokenizer("byte") if byte_level else data.make_tokenizer("bpe", tokenizer_source),
                     c.vocab_size)
    model, _, optimizer = build(config)
    state = create_train_state(model, optimizer, jax.random.key(config.seed))
    state = state.replace(params=params, opt_state=optimizer.init(params))
    with staged_directory(workdir, replace=False, flag="--workdir") as staging:  # a failed import leaves nothing
        if not byte_level:
            shutil.copyfile(tokenizer_source, os.path.join(staging, "tokenizer.json"))
        checkpointer = Checkpointer(os.path.join(staging, "checkpoints"))
        checkpointer.save(0, state, {"data_offset": 0, "recoveries": 0, "lr_scale": 1.0})
        checkpointer.wait()
        write_text_atomically(epath.Path(staging) / CONFIG_FILE, config.to_json_best_effort(indent=2, sort_keys=True))
    return {"workdir": os.path.abspath(workdir), "architecture": preset, "num_layers": c.num_layers,
            "d_model": c.d_model, "vocab_size": c.vocab_size}

