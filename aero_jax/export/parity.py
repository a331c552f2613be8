"""JAX against its PyTorch export, number for number: what tests and benchmarks/export_parity.py measure.

Needs torch (the `export` extra). The PyTorch side is modeling_aero.py exactly as exported.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib import resources
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from aero_jax import presets
from aero_jax.config import ModelConfig
from aero_jax.export import aero_config, fold
from aero_jax.model import AeroLM, init_variables, logits_and_entropy, split_variables


def load_modeling():
    """The modeling_aero module shipped in this package (registered in sys.modules, as its dataclass needs)."""
    if "modeling_aero" not in sys.modules:
        path = resources.files("aero_jax.export") / "modeling_aero.py"
        spec = importlib.util.spec_from_file_location("modeling_aero", str(path))
        module = importlib.util.module_from_spec(spec)
        sys.modules["modeling_aero"] = module
        spec.loader.exec_module(module)
    return sys.modules["modeling_aero"]


def torch_model(c: ModelConfig, params, model_state, dtype: str = "float32"):
    """The PyTorch model of a folded JAX model, loaded strictly (every tensor, nothing else)."""
    import torch  # lazy: torch is optional (the export extra), and moved_model serves tests without it

    modeling = load_modeling()
    model = modeling.AeroForCausalLM(modeling.AeroConfig.from_fields(aero_config(c, {})))
    plain = fold.plain_tensors(c, params, model_state)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in plain.items()}, strict=True)
    return model.cast(getattr(torch, dtype)).eval()


def perturbed(tree, seed: int):
    """Every leaf moved off its init (alpha, beta, temperatures, slopes, gains), as training would move it."""
    leaves, structure = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    moved = [x * (1 + 0.3 * jax.random.normal(k, x.shape)) + 0.02 * jax.random.normal(jax.random.fold_in(k, 1),
                                                                                         x.shape)
             for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(structure, moved)


def moved_model(name: str, seed: int = 1, **size) -> Tuple[AeroLM, dict, dict]:
    """(model, params, model state) of a preset with every parameter off its init and, with spectral norm, the
    power iterations advanced as a training step advances them."""
    model = AeroLM(presets.model_config(name, **size))
    params, state = split_variables(init_variables(model, jax.random.key(0)))
    params = perturbed(params, seed=seed)
    if state:
        _, _, state = logits_and_entropy(model, {"params": params, **state}, jnp.zeros((2, 8), jnp.int32), train=True)
    return model, params, state


def parity_inputs(vocab_size: int, seq_len: int) -> Dict[str, np.ndarray]:
    """Random rows, full-length rows, one token repeated, and ids a model trained on bytes < 128 never saw."""
    rng = np.random.default_rng(0)
    return {"random": rng.integers(0, vocab_size, (3, seq_len - 5)),
            "full length": rng.integers(0, vocab_size, (2, seq_len)),
            "one token repeated": np.full((1, seq_len), 7),
            "unseen ids": rng.integers(min(200, vocab_size - 1), vocab_size, (2, seq_len))}


def max_differences(model: AeroLM, variables, exported, tokens: np.ndarray) -> Tuple[float, float]:
    """(max |logit difference|, max |entropy difference|) of the JAX model and its export on some rows."""
    import torch  # lazy: torch is optional (the export extra), and moved_model serves tests without it

    logits, entropy, _ = logits_and_entropy(model, variables, jnp.asarray(tokens))
    with torch.no_grad():
        out = exported(torch.from_numpy(tokens), return_entropy=True)
    return (float(np.abs(out.logits.float().numpy() - np.asarray(logits)).max()),
            float(np.abs(out.entropy.float().numpy() - np.asarray(entropy)).max()))
