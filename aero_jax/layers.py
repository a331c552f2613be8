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
LN_CALIBRATION = "ln_calibration"  # frozen LayerNorm scales: the inference-time substitute
LN_STD_NAME = "ln_std"
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


class LayerNorm(nn.Module):
    """GPT-2's LayerNorm, or its inference-time substitute (method file, section 9).

    `frozen=False`: y = gamma (x - mean(x)) / sqrt(var(x) + eps) + beta; the mean over tokens of
    the per-token scale sqrt(var + eps) is sown (`ln_std`) for calibration. `frozen=True`: the
    per-token scale is replaced by that calibrated constant (collection `ln_calibration`), which
    leaves a sample-independent linear map that can be folded into the next linear layer.
    """

    epsilon: float = 1e-5
    frozen: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        centered = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        if self.frozen:
            std = self.variable(LN_CALIBRATION, "std", lambda: jnp.ones((), jnp.float32)).value
            normalized = centered / std
        else:
            inv_std = jax.lax.rsqrt(jnp.mean(jnp.square(centered), axis=-1, keepdims=True) + self.epsilon)
            self.sow("intermediates", LN_STD_NAME, jnp.mean(1.0 / inv_std))
            normalized = centered * inv_std
        expand = (1,) * (x.ndim - 1) + (-1,)
        return (normalized * scale.reshape(expand) + bias.reshape(expand)).astype(self.dtype)
