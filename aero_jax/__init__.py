"""aero-jax: AERO (entropy-guided nonlinearity reduction for private LLM inference) in JAX/Flax."""

from aero_jax import config, entropy, model, presets

__version__ = "0.1.0"
__all__ = ["config", "entropy", "model", "presets"]
