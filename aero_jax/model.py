"""AeroLM: a GPT-2 style decoder with every AERO switch of ModelConfig (flax.linen).

Attention is written out so the per-head probabilities are at hand: their entropy is computed
in-graph and sown into the `intermediates` collection as [B, H, T] per layer (never T x T maps).

Every token carries its absolute position (0, 1, ...; -1 for padding), which picks its position
embedding and its learned temperatures and decides what it may attend to. With `decode=True` the
keys, values and positions of the tokens seen so far are kept in the `cache` collection, so a
generated token costs one position, not a pass over the whole sequence (aero_jax.sample).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from aero_jax.config import ModelConfig
from aero_jax.entropy import attention_entropy
from aero_jax.layers import SPECTRAL_COLLECTION, LayerNorm, Linear

ENTROPY_NAME = "attention_entropy"
NONFINITE_NAME = "attention_nonfinite"
THRESHOLDS = "entropy_thresholds"
STRENGTH_LOGITS = "entropy_strength_logits"
CACHE = "cache"
PAD_POSITION = -1  # the position of a padding token: it attends to nothing and nothing attends to it
# What a rematerialised block keeps for the backward pass: nothing (recompute the block), or the outputs of the
# weight matmuls (dots without batch dimensions), so attention and element-wise work are recomputed.
REMAT_POLICIES = {"block": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


TEMPERATURE_FLOOR = 1e-4  # temperature_param="raw": the learned t is used as max(t, this)


def _linear(c: ModelConfig, features: int, group: str, *, residual: bool = False, name: str) -> Linear:
    """A Linear of a group (qk, v, o, ffn): its norm and bias from the config; residual outputs may get
    GPT-2's 1/sqrt(2L) init."""
    std = c.init_std / math.sqrt(2 * c.num_layers) if residual and c.residual_init_scaling else c.init_std
    return Linear(features, init_std=std, norm=c.norm_of(group), power_iters=c.spectral_norm_iters,
                  use_bias=group in c.bias_groups, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                  name=name)


def temperature_name(c: ModelConfig) -> str:
    return "temperature" if c.temperature_param == "raw" else "log_temperature"


def temperature_from(p_HxT: jnp.ndarray, c: ModelConfig) -> jnp.ndarray:
    """The temperature t the attention divides by, from its learned parameter (times `temperature_scale`)."""
    t_HxT = jnp.maximum(p_HxT, TEMPERATURE_FLOOR) if c.temperature_param == "raw" else jnp.exp(p_HxT)
    return t_HxT if c.temperature_scale == 1.0 else t_HxT * c.temperature_scale


def temperatures(attn_params, c: ModelConfig) -> jnp.ndarray:
    """The attention temperatures t [H, max_len] of one layer, as the forward pass uses them."""
    return temperature_from(attn_params[temperature_name(c)], c)


def stream_dtype(c: ModelConfig) -> jnp.dtype:
    """The residual stream's dtype: float32 under float16 compute, where, as in the papers' AMP, embeddings,
    residual sums and LayerNorm outputs stay float32 and only matrix products run in half precision; else the
    compute dtype."""
    return jnp.dtype(jnp.float32) if c.dtype == "float16" else jnp.dtype(c.dtype)


def _layer_norm(c: ModelConfig, name: str) -> LayerNorm:
    return LayerNorm(epsilon=c.ln_epsilon, frozen=c.ln_frozen, dtype=stream_dtype(c),
                     param_dtype=jnp.dtype(c.param_dtype), name=name)


def visible(query_positions_BxT: jnp.ndarray, key_positions_BxS: jnp.ndarray) -> jnp.ndarray:
    """[B, T, S] boolean, true where a query may attend to a key: a real key at or before the query's position."""
    keys_Bx1xS = key_positions_BxS[:, None, :]
    return (keys_Bx1xS != PAD_POSITION) & (keys_Bx1xS <= query_positions_BxT[:, :, None])


def rows_at(table_NxX: jnp.ndarray, positions_BxT: jnp.ndarray) -> jnp.ndarray:
    """[B, T, X]: the table's row at each token's position (padding reads row 0, which nothing uses)."""
    return jnp.take(table_NxX, jnp.maximum(positions_BxT, 0), axis=0)


def default_positions(seq_len: int) -> jnp.ndarray:
    """[1, T]: positions 0..T-1, the same for every row of an unpadded batch."""
    return jnp.arange(seq_len, dtype=jnp.int32)[None]


@flax.struct.dataclass
class Positions:
    """Where the tokens of a call sit: queries [B or 1, T] and the keys they see [B or 1, S].

    Without decoding the keys are the queries. While decoding the keys are every cached token and
    `slot` is where this call's tokens are written in the cache (None while the cache is created).
    `decoding` is static, so a rematerialised block still branches on it in Python.
    """

    queries_BxT: jnp.ndarray
    keys_BxS: jnp.ndarray
    decoding: bool = flax.struct.field(pytree_node=False, default=False)
    slot: Optional[jnp.ndarray] = None

    @classmethod
    def unpadded(cls, seq_len: int) -> "Positions":
        """Positions 0..T-1 in every row, no cache: training and evaluation."""
        return cls(default_positions(seq_len), default_positions(seq_len))


def score_dtype(compute_dtype) -> jnp.dtype:
    """The dtype attention scores are formed in: float16 under float16 compute, as the papers' AMP forms q k^T,
    its scaling and masking in half precision (where large scores overflow); float32 otherwise."""
    return jnp.dtype(jnp.float16) if jnp.dtype(compute_dtype) == jnp.float16 else jnp.dtype(jnp.float32)


@jax.named_scope("attention_scores")  # names its operations in profiles (benchmarks/profile_step.py)
def tempered_scores(q_BxTxHxK: jnp.ndarray, k_BxSxHxK: jnp.ndarray, t_BxTxH: Optional[jnp.ndarray] = None
                    ) -> jnp.ndarray:
    """q k / sqrt(K), divided by each query's temperature when there is one: [B, H, T, S] in score_dtype."""
    dtype = score_dtype(q_BxTxHxK.dtype)
    scores_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK,
                                preferred_element_type=dtype) / jnp.asarray(math.sqrt(q_BxTxHxK.shape[-1]), dtype)
    if t_BxTxH is None:
        return scores_BxHxTxS
    return scores_BxHxTxS / jnp.moveaxis(t_BxTxH, -1, 1)[..., None].astype(dtype)


@jax.named_scope("attention_softmax")  # names its operations in profiles (benchmarks/profile_step.py)
def attention_probabilities(scores_BxHxTxS: jnp.ndarray) -> jnp.ndarray:
    """Softmax over the keys in float32 in every precision (autocast's, under the papers' float16); masked entries
    come out as exact zeros."""
    return jax.nn.softmax(scores_BxHxTxS.astype(jnp.float32), axis=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with optional learnable temperature per head and position."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jnp.ndarray, positions: Optional[Positions] = None, *, train: bool) -> jnp.ndarray:
        c = self.config
        B, T, D = x_BxTxD.shape
        positions = Positions.unpadded(T) if positions is None else positions
        H, K = c.num_heads, c.head_dim
        if c.qk_fused:
            qk_BxTx2D = _linear(c, 2 * D, "qk", name="qk")(x_BxTxD, update_stats=train)
            q_BxTxHxK, k_BxSxHxK = (part.reshape(B, T, H, K) for part in jnp.split(qk_BxTx2D, 2, axis=-1))
        else:
            q_BxTxHxK = _linear(c, D, "qk", name="query")(x_BxTxD, update_stats=train).reshape(B, T, H, K)
            k_BxSxHxK = _linear(c, D, "qk", name="key")(x_BxTxD, update_stats=train).reshape(B, T, H, K)
        v_BxSxHxK = _linear(c, D, "v", name="value")(x_BxTxD, update_stats=train).reshape(B, T, H, K)
        if positions.decoding:
            k_BxSxHxK, v_BxSxHxK = self._cached(k_BxSxHxK, v_BxSxHxK, positions.slot)

        if c.learnable_temperature:  # one positive t per head and (absolute) query position
            init = c.temperature_init if c.temperature_param == "raw" else math.log(c.temperature_init)
            p_HxL = self.param(temperature_name(c), nn.initializers.constant(init), (H, c.max_len), jnp.float32)
            t_BxTxH = rows_at(temperature_from(p_HxL, c).T, positions.queries_BxT)
            # Recomputed in the backward pass: the temperature's gradient needs the scores before the division,
            # which would otherwise be kept as one more [B, H, T, S] float32 array (docs/scaling.md).
            scores_BxHxTxS = jax.checkpoint(tempered_scores)(q_BxTxHxK, k_BxSxHxK, t_BxTxH)
        else:
            scores_BxHxTxS = tempered_scores(q_BxTxHxK, k_BxSxHxK)
        mask_BxTxS = visible(positions.queries_BxT, positions.keys_BxS)
        scores_BxHxTxS = jnp.where(mask_BxTxS[:, None], scores_BxHxTxS, jnp.finfo(scores_BxHxTxS.dtype).min)
        probs_BxHxTxS = attention_probabilities(scores_BxHxTxS)
        if c.sow_entropy and not positions.decoding:  # diagnostics: entropy per row, non-finite probabilities
            self.sow("intermediates", ENTROPY_NAME, attention_entropy(probs_BxHxTxS))
            self.sow("intermediates", NONFINITE_NAME, jnp.sum(~jnp.isfinite(probs_BxHxTxS)))

        out_BxTxHxK = jnp.einsum("bhts,bshk->bthk", probs_BxHxTxS.astype(v_BxSxHxK.dtype), v_BxSxHxK)
        return _linear(c, D, "o", residual=True, name="out")(out_BxTxHxK.reshape(B, T, D), update_stats=train)

    def _cached(self, k_BxTxHxK, v_BxTxHxK, slot):
        """Write this step's keys and values into the cache at `slot`; every cached key and value.

        While the cache is being created (`slot` is None) its shape is taken from the dummy batch.
        """
        cached_k = self.variable(CACHE, "cached_key", jnp.zeros, k_BxTxHxK.shape, k_BxTxHxK.dtype)
        cached_v = self.variable(CACHE, "cached_value", jnp.zeros, v_BxTxHxK.shape, v_BxTxHxK.dtype)
        if slot is None:
            return k_BxTxHxK, v_BxTxHxK
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxTxHxK, (0, slot, 0, 0))
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxTxHxK, (0, slot, 0, 0))
        return cached_k.value, cached_v.value


def leaky_relu(x: jnp.ndarray, slope) -> jnp.ndarray:
    return jnp.where(x >= 0, x, slope * x)


class FeedForward(nn.Module):
    """act(x W_in) W_out, or a single fused d x d matrix when the activation is the identity."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jnp.ndarray, *, train: bool, global_slope=None) -> jnp.ndarray:
        c = self.config
        D = c.d_model
        if c.ffn_fused:
            return _linear(c, D, "ffn", residual=True, name="fused")(x_BxTxD, update_stats=train)
        h_BxTxF = _linear(c, c.d_ff, "ffn", name="fc_in")(x_BxTxD, update_stats=train)
        h_BxTxF = self._activate(h_BxTxF, global_slope)
        return _linear(c, D, "ffn", residual=True, name="fc_out")(h_BxTxF, update_stats=train)

    def _activate(self, h, global_slope):
        c = self.config
        if c.activation == "gelu":
            return nn.gelu(h, approximate=c.gelu_form == "tanh")
        if c.activation == "relu":
            return nn.relu(h)
        if c.activation == "leaky_relu":
            return leaky_relu(h, c.leaky_slope)
        if c.activation == "learnable_leaky_relu":
            slope = global_slope
            if c.leaky_slope_scope == "per_layer":
                slope = self.param("leaky_slope", nn.initializers.constant(c.leaky_slope), (), jnp.float32)
            return leaky_relu(h, slope.astype(h.dtype))
        return h  # identity


class Block(nn.Module):
    """X_sa = X + MHA(LN1(X)); X_out = X_sa + FFN(LN2(X_sa)), or beta X_sa + FFN / alpha (ScFFN)."""

    config: ModelConfig
    layer: int

    @nn.compact
    def __call__(self, x_BxTxD: jnp.ndarray, positions: Optional[Positions] = None, train: bool = False,
                 global_slope=None) -> jnp.ndarray:
        c = self.config
        h = _layer_norm(c, "ln_attn")(x_BxTxD) if c.ln_attn else x_BxTxD
        x_BxTxD = x_BxTxD + CausalSelfAttention(c, name="attn")(h, positions, train=train)
        if not c.has_ffn(self.layer):
            return x_BxTxD
        h = _layer_norm(c, "ln_ffn")(x_BxTxD) if c.ln_ffn else x_BxTxD
        ffn_BxTxD = FeedForward(c, name="ffn")(h, train=train, global_slope=global_slope)
        if not c.ffn_scaling:
            return x_BxTxD + ffn_BxTxD
        alpha = self.param("ffn_alpha", nn.initializers.constant(c.ffn_alpha_init), (), jnp.float32)
        beta = self.param("ffn_beta", nn.initializers.constant(c.ffn_beta_init), (), jnp.float32)
        dtype = x_BxTxD.dtype
        return beta.astype(dtype) * x_BxTxD + ffn_BxTxD / alpha.astype(dtype)


class AeroLM(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab] (float32), with a tied LM head.

    With `train=True` spectral-norm power iterations advance (make `spectral` mutable).
    The EReg thresholds (and optional per-head strength logits) live in the parameter tree so
    the optimizer learns them; the loss reads them from there. `positions_BxT` gives each token's
    absolute position (default 0..T-1; -1 marks padding); `decode=True` appends the tokens to the
    `cache` collection and attends over everything cached (aero_jax.sample.init_cache makes it).
    """

    config: ModelConfig
    # Where the [B, T, D] activations live on a mesh (rows over the batch axes); None leaves it to XLA. Without it
    # an fsdp mesh propagates the embedding's feature sharding into every layer.
    activation_sharding: Optional[jax.sharding.Sharding] = None

    @nn.compact
    def __call__(self, tokens_BxT: jnp.ndarray, *, train: bool = False, positions_BxT: Optional[jnp.ndarray] = None,
                 decode: bool = False, last_only: bool = False) -> jnp.ndarray:
        c = self.config
        T = tokens_BxT.shape[-1]
        if T > c.max_len:
            raise ValueError(f"sequence length {T} is invalid; accepted: at most max_len={c.max_len}")
        queries_BxT = default_positions(T) if positions_BxT is None else positions_BxT.astype(jnp.int32)
        if decode:  # the cache holds one row of positions per sequence
            positions = self._cached_positions(jnp.broadcast_to(queries_BxT, tokens_BxT.shape))
        else:
            positions = Positions(queries_BxT, queries_BxT)
        init = nn.initializers.normal(c.init_std)
        wte = nn.Embed(c.vocab_size, c.d_model, embedding_init=init, dtype=stream_dtype(c),
                       param_dtype=jnp.dtype(c.param_dtype), name="wte")
        wpe_LxD = self.param("wpe", init, (c.max_len, c.d_model), jnp.dtype(c.param_dtype))
        x_BxTxD = self._placed(wte(tokens_BxT) + rows_at(wpe_LxD, queries_BxT).astype(stream_dtype(c)))

        global_slope = None
        if c.activation == "learnable_leaky_relu" and c.leaky_slope_scope == "global":
            global_slope = self.param("leaky_slope", nn.initializers.constant(c.leaky_slope), (), jnp.float32)
        block = Block if c.remat == "none" or decode else nn.remat(Block, static_argnums=(3,),
                                                                    policy=REMAT_POLICIES[c.remat])
        for layer in range(c.num_layers):
            x_BxTxD = self._placed(block(c, layer, name=f"block_{layer}")(x_BxTxD, positions, train, global_slope))
        if last_only:  # a prompt pass needs only the next token's logits: [B, 1, V], not [B, T, V]
            x_BxTxD = x_BxTxD[:, -1:]
        if c.ln_final:
            x_BxTxD = _layer_norm(c, "ln_final")(x_BxTxD)

        if c.entropy_reg:
            shape = (c.num_layers, c.num_heads)
            self.param(THRESHOLDS, nn.initializers.constant(c.ereg_threshold_init), shape, jnp.float32)
            if c.ereg_head_strengths:
                self.param(STRENGTH_LOGITS, nn.initializers.zeros, shape, jnp.float32)
        compute = jnp.dtype(c.dtype)  # the tied LM head is a matrix product: in the compute dtype
        return jnp.einsum("btd,vd->btv", x_BxTxD.astype(compute), wte.embedding.astype(compute)).astype(jnp.float32)

    def _placed(self, x_BxTxD: jnp.ndarray) -> jnp.ndarray:
        if self.activation_sharding is None:
            return x_BxTxD
        return jax.lax.with_sharding_constraint(x_BxTxD, self.activation_sharding)

    def _cached_positions(self, queries_BxT: jnp.ndarray) -> Positions:
        """Append this call's positions to the cache: the next free slot, and the positions of every cached key.

        Empty slots hold PAD_POSITION, so nothing attends to them. While the cache is being created its
        length is the dummy batch's.
        """
        creating = not self.has_variable(CACHE, "positions")
        cached = self.variable(CACHE, "positions", jnp.full, queries_BxT.shape, PAD_POSITION, jnp.int32)
        next_slot = self.variable(CACHE, "next_slot", jnp.zeros, (), jnp.int32)
        if creating:
            return Positions(queries_BxT, queries_BxT, decoding=True)
        slot = next_slot.value
        cached.value = jax.lax.dynamic_update_slice(cached.value, queries_BxT, (0, slot))
        next_slot.value = slot + queries_BxT.shape[-1]
        return Positions(queries_BxT, cached.value, decoding=True, slot=slot)


def _stack_sown(intermediates, name: str, num_layers: int) -> jnp.ndarray:
    """A value sown by every attention layer, stacked along a leading layer axis."""
    return jnp.stack([intermediates[f"block_{l}"]["attn"][name][0] for l in range(num_layers)])


def forward(model: AeroLM, variables, tokens_BxT: jnp.ndarray, *, train: bool = False
            ) -> Tuple[jnp.ndarray, dict, dict]:
    """Logits, attention diagnostics and the updated model state in one pass.

    Diagnostics (empty when sow_entropy=False): `entropy` [L, B, H, T] and `nonfinite` [L], the
    count of non-finite attention probabilities per layer. The state holds the non-trainable
    collections (spectral-norm vectors); it changes only when `train` is true.
    """
    mutable = ["intermediates"] + ([SPECTRAL_COLLECTION] if train and SPECTRAL_COLLECTION in variables else [])
    logits, updated = model.apply(variables, tokens_BxT, train=train, mutable=mutable)
    state = {k: v for k, v in variables.items() if k != "params"}
    state.update({k: v for k, v in updated.items() if k != "intermediates"})
    diagnostics = {}
    if model.config.sow_entropy:
        layers = model.config.num_layers
        diagnostics = {"entropy": _stack_sown(updated["intermediates"], ENTROPY_NAME, layers),
                       "nonfinite": _stack_sown(updated["intermediates"], NONFINITE_NAME, layers)}
    return logits, diagnostics, state


def logits_and_entropy(
    model: AeroLM, variables, tokens_BxT: jnp.ndarray, *, train: bool = False
) -> Tuple[jnp.ndarray, Optional[jnp.ndarray], dict]:
    """One forward pass: logits [B, T, V], entropies [L, B, H, T], and the updated model state.

    Entropies are None when the config has sow_entropy=False.
    """
    logits, diagnostics, state = forward(model, variables, tokens_BxT, train=train)
    return logits, diagnostics.get("entropy"), state


def split_variables(variables) -> Tuple[dict, dict]:
    """(params, model state): the trainable tree and the other collections (e.g. spectral)."""
    params = variables["params"]
    return params, {k: v for k, v in variables.items() if k != "params"}


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def init_variables(model: AeroLM, rng: jax.Array, batch_size: int = 1, seq_len: Optional[int] = None) -> dict:
    """Parameters and state for a model, traced on a dummy batch of token ids."""
    tokens = jnp.zeros((batch_size, seq_len or model.config.max_len), jnp.int32)
    variables = model.init(rng, tokens)
    return {k: v for k, v in variables.items() if k != "intermediates"}
