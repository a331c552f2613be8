"""Nonlinear-operation counts read off the traced forward pass (its jaxpr), to check the config's.

Only operations on values that depend on the input tokens count: parameter-only work (weight
norms, temperatures exp(log_t)) is done once before serving. Primitives: `exp` (softmax),
`rsqrt` (LayerNorm, one per row), `tanh`, `erf` or `erfc` (GELU), `max` against 0 (ReLU), `select_n` on
a data-dependent predicate (leaky ReLU).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Dict

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from aero_jax.model import AeroLM

PRIMITIVE_OPS = {"exp": "SM", "rsqrt": "LN", "tanh": "G", "erf": "G", "erfc": "G", "max": "R", "select_n": "LR"}


def _against_zero(eqn) -> bool:
    return any(isinstance(v, jex_core.Literal) and float(v.val) == 0.0 for v in eqn.invars)


def _subjaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jex_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex_core.Jaxpr):
                yield item


def _count(jaxpr, tainted_inputs, counts: Counter) -> list:
    """Count element-wise nonlinear work on tainted values; returns which outputs are tainted."""
    tainted = {v for v, t in zip(jaxpr.invars, tainted_inputs) if t}
    for eqn in jaxpr.eqns:
        inputs = [isinstance(v, jex_core.Var) and v in tainted for v in eqn.invars]
        if not any(inputs):
            continue
        subs = list(_subjaxprs(eqn))
        if subs:
            outs = [False] * len(eqn.outvars)
            for sub in subs:
                sub_inputs = inputs[-len(sub.invars):] if len(sub.invars) <= len(inputs) else \
                    inputs + [False] * (len(sub.invars) - len(inputs))
                sub_out = _count(sub, sub_inputs, counts)
                outs = [a or b for a, b in zip(outs, sub_out + [False] * (len(outs) - len(sub_out)))]
        else:
            outs = [True] * len(eqn.outvars)
            op = PRIMITIVE_OPS.get(eqn.primitive.name)
            # softmax's max(-inf, row max) and LayerNorm's max(0, variance) on [B, T] are no ReLU
            if op == "R" and not (_against_zero(eqn) and len(eqn.outvars[0].aval.shape) >= 3):
                op = None
            if op == "LR" and not inputs[0]:  # a select on a constant mask (causal) is no activation
                op = None
            if not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):  # index arithmetic
                op = None
            if op:
                counts[op] += math.prod(eqn.outvars[0].aval.shape)
        tainted.update(v for v, t in zip(eqn.outvars, outs) if t)
    return [isinstance(v, jex_core.Var) and v in tainted for v in jaxpr.outvars]


def traced_nonlinear_elements(model: AeroLM, variables, seq_len: int) -> Dict[str, int]:
    """Elements of each nonlinear operation in one forward pass over one sequence of seq_len tokens."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    closed = jax.make_jaxpr(lambda v, t: model.apply(v, t))(variables, tokens)
    n_variable_leaves = len(jax.tree_util.tree_leaves(variables))
    tainted = [False] * n_variable_leaves + [True]
    counts: Counter = Counter()
    _count(closed.jaxpr, tainted, counts)
    return dict(counts)
