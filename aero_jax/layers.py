"""Linear layers with optional weight or spectral normalization (method file, section 5).

Both reparameterisations change only how the kernel is formed, so they cost nothing at
inference: the effective kernel can be materialised once and served as a plain matrix.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("none", "weight", "spectral")
SPECTRAL_COLLECTION = "spectral"
_TINY = 1e-12


def _unit(x: jnp.ndarray) -> jnp.ndarray:
    return x / (jnp.linalg.norm(x) + _TINY)


def weight_normalized(direction_IxO: jnp.ndarray, scale_O: jnp.ndarray) -> jnp.ndarray:
    """W = g * V / ||V||, one norm per output unit (a column of the [in, out] kernel)."""
    norms_1xO = jnp.linalg.norm(direction_IxO, axis=0, keepdims=True)
    return direction_IxO * (scale_O[None, :] / (norms_1xO + _TINY))


def power_iteration(kernel_IxO: jnp.ndarray, u_O: jnp.ndarray, steps: int) -> jnp.ndarray:
    """Refine the estimate u of the top right singular vector of the kernel."""
    for _ in range(steps):
        v_I = _unit(kernel_IxO @ u_O)
        u_O = _unit(kernel_IxO.T @ v_I)
    return u_O


def spectral_sigma(kernel_IxO: jnp.ndarray, u_O: jnp.ndarray) -> jnp.ndarray:
    """sigma = ||W u|| with u held constant: its gradient is v u^T, as in Miyato et al."""
    return jnp.linalg.norm(kernel_IxO @ jax.lax.stop_gradient(u_O))


class Linear(nn.Module):
    """y = x W + b with W [in, out], optionally weight- or spectrally normalized.

    Spectral norm keeps its power-iteration vector in the non-trainable `spectral` collection;
    it is refined and stored only when `update_stats` is true (training, collection mutable).
    """

    features: int
    init_std: float = 0.02
    norm: str = "none"
    power_iters: int = 1
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, update_stats: bool = False) -> jnp.ndarray:
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r} is invalid; accepted: {', '.join(NORMS)}")
        init = nn.initializers.normal(self.init_std)
        kernel = self.param("kernel", init, (x.shape[-1], self.features), self.param_dtype)
        if self.norm == "weight":
            # g starts at the initial column norms, so the reparameterised layer starts where
            # the plain one would.
            scale = self.param("scale", lambda _: jnp.linalg.norm(kernel, axis=0))
            kernel = weight_normalized(kernel, scale)
        elif self.norm == "spectral":
            kernel = self._spectrally_normalized(kernel, update_stats)
        # A 2-D matmul: XLA:CPU computes the kernel gradient of a dot with several contracting
        # dimensions about twice as slowly (benchmarks/step_throughput.py).
        x_NxI = x.reshape(-1, x.shape[-1]).astype(self.dtype)
        y_NxO = jnp.dot(x_NxI, kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y_NxO = y_NxO + bias.astype(self.dtype)[None, :]
        return y_NxO.reshape(*x.shape[:-1], self.features)

    def _spectrally_normalized(self, kernel: jnp.ndarray, update_stats: bool) -> jnp.ndarray:
        u = self.variable(
            SPECTRAL_COLLECTION, "u",
            lambda: _unit(jax.random.normal(self.make_rng("params"), (self.features,), jnp.float32)),
        )
        kernel32 = kernel.astype(jnp.float32)
        u_O = u.value
        if update_stats:
            u_O = power_iteration(jax.lax.stop_gradient(kernel32), u_O, self.power_iters)
            if not self.is_initializing():
                u.value = u_O
        return (kernel32 / spectral_sigma(kernel32, u_O)).astype(kernel.dtype)
