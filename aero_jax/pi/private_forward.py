"""One private forward pass of an exported AERO model under 2-party computation (SecretFlow SPU).

Runs in its own environment (`make pi-env`: spu 0.9.5, jax 0.4.34, numpy, safetensors) and imports
nothing of aero_jax; aero-pi-measure starts it as a script:

    python private_forward.py --model DIR --layers K --protocol cheetah --result RESULT.json

DIR holds config.json and model.safetensors (the AERO layout of aero-export, float32) and
tokens.json, the client's T tokens. The client (party 0) owns the tokens, the server (party 1) the
weights; the two parties are threads of this process joined by SPU's in-process link, so nothing
leaves the machine. The forward runs as a chain of SPU programs, one per operation (a segment:
a LayerNorm, the softmax of one layer, one matrix product, ...), whose values stay secret-shared
between programs. Rank 0 prints SPU's profile of every program to standard output (its bytes and
messages, read by aero-pi-measure); this script writes each segment's CPU and wall seconds, the
revealed logits next to the plaintext ones of the same functions, and the settings to RESULT.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import queue
import resource
import sys
import threading
import time
from typing import Callable, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

import spu.api as spu_api
import spu.libspu as libspu
from spu.utils import frontend

PROTOCOLS = {"cheetah": libspu.ProtocolKind.CHEETAH, "semi2k": libspu.ProtocolKind.SEMI2K}
FRACTION_BITS = 18
CLIENT, SERVER, NO_OWNER = 0, 1, -1
SEGMENT_MARK = "@@segment"  # printed before each program runs, so a reader can show progress
ACTIVATION_KINDS = {"gelu": "GELU", "relu": "ReLU", "leaky_relu": "leaky ReLU"}


@dataclasses.dataclass(frozen=True)
class Segment:
    """One SPU program of the forward: `outputs = fn(*inputs)` over named values."""

    name: str  # unique, also the program's name in SPU's profile
    kind: str  # embedding, LayerNorm, linear, softmax, GELU / ReLU / leaky ReLU, LM head, rest
    site: str  # attention (every block), ffn (blocks with an FFN), model (once per forward)
    fn: Callable
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]


# -- the model's operations, as the programs compute them ------------------------------------------------


def layer_norm(x, weight, bias, eps):
    centred = x - x.mean(-1, keepdims=True)
    return centred * jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + eps) * weight + bias


def centred_affine(x, weight, bias):
    """The frozen LayerNorm substitute: a linear map."""
    return (x - x.mean(-1, keepdims=True)) * weight + bias


def causal_softmax(scores_HxTxT, scale):
    """Softmax of scaled scores over the visible keys. The public causal mask multiplies exp(s - max): a large
    negative fill before exp breaks SPU's fixed-point exponential, a product by 0 or 1 does not."""
    T = scores_HxTxT.shape[-1]
    visible = np.tril(np.ones((T, T), np.float32))
    scaled = scores_HxTxT * scale
    row_max = jnp.max(jnp.where(visible > 0, scaled, -1e4), axis=-1, keepdims=True)
    shifted = (scaled - row_max) * visible  # <= 0 where visible, 0 where masked
    weights = jnp.exp(shifted) * visible
    return weights / weights.sum(-1, keepdims=True)


def activation_fn(config: dict) -> Callable:
    kind = config["activation"]
    if kind == "gelu":
        return lambda h: jax.nn.gelu(h, approximate=config.get("gelu_form") == "tanh")
    if kind == "relu":
        return lambda h: jnp.maximum(h, 0.0)
    if kind == "leaky_relu":
        return lambda h, slope: jnp.where(h >= 0, h, slope * h)
    return lambda h: h  # identity: a fused FFN


# -- the forward as segments ---------------------------------------------------------------------------------


class Program:
    """Builds the segment chain and the server's and client's inputs of one forward pass."""

    def __init__(self, config: dict, weights: Dict[str, np.ndarray], tokens: np.ndarray, layers: int, *,
                 blocks_only: bool = False):
        self.c, self.w, self.tokens, self.layers, self.blocks_only = config, weights, tokens, layers, blocks_only
        self.segments: List[Segment] = []
        self.server: Dict[str, np.ndarray] = {}
        self.client: Dict[str, np.ndarray] = {}
        self.shared: Dict[str, np.ndarray] = {}  # secret-shared with no owner (blocks_only: the blocks' input)

    def add(self, name, kind, site, fn, inputs, outputs):
        self.segments.append(Segment(name, kind, site, fn, tuple(inputs), tuple(outputs)))

    def own(self, name: str, value) -> str:
        self.server[name] = np.ascontiguousarray(np.asarray(value, np.float32))
        return name

    def vocab_chunks(self) -> List[Tuple[int, int]]:
        """Column ranges of the vocabulary: one embedding or LM-head product is never larger than an FFN's."""
        d, V = self.c["d_model"], self.c["vocab_size"]
        width = max(self.c["d_ff"], d)
        return [(start, min(start + width, V)) for start in range(0, V, width)]

    def build(self) -> "Program":
        """The forward's segments; `blocks_only` starts from the embedded tokens as a shared secret and ends after the
        blocks (what a benchmark measures per architecture, the vocabulary products apart)."""
        if self.blocks_only:
            T = self.tokens.shape[0]
            self.shared["x.embedded"] = self.w["wte.weight"][self.tokens] + self.w["wpe.weight"][:T]
            self.x = "x.embedded"
        else:
            self._embedding()
        for layer in range(self.layers):
            self._block(layer)
        if self.blocks_only:
            self.revealed = [self.x]
        else:
            self._head()
        return self

    def _embedding(self):
        T = self.tokens.shape[0]
        one_hot = np.eye(self.c["vocab_size"], dtype=np.float32)[self.tokens]
        wte, positions = self.w["wte.weight"], self.own("wpe", self.w["wpe.weight"][:T])
        accumulated = positions
        for i, (start, stop) in enumerate(self.vocab_chunks()):
            self.client[f"one_hot.{i}"] = np.ascontiguousarray(one_hot[:, start:stop])
            table = self.own(f"wte.{i}", wte[start:stop])
            out = f"x.embedding.{i}"
            self.add(f"embedding.{i}", "embedding", "model", lambda oh, table, acc: acc + oh @ table,
                     [f"one_hot.{i}", table, accumulated], [out])
            accumulated = out
        self.x = accumulated

    def _norm(self, prefix: str, x: str, site: str) -> str:
        weight, bias = self.own(f"{prefix}.weight", self.w[f"{prefix}.weight"]), self.own(
            f"{prefix}.bias", self.w[f"{prefix}.bias"])
        out = f"{prefix}.out"
        if self.c["ln_mode"] == "layernorm":
            eps = self.c["ln_epsilon"]
            self.add(prefix, "LayerNorm", site, lambda x, w, b: layer_norm(x, w, b, eps), [x, weight, bias], [out])
        else:
            self.add(prefix, "rest", site, centred_affine, [x, weight, bias], [out])
        return out

    def _linear(self, prefix: str) -> Tuple[str, str]:
        """The server's (kernel [in, out], bias) of a folded Linear."""
        return (self.own(f"{prefix}.kernel", self.w[f"{prefix}.weight"].T),
                self.own(f"{prefix}.bias", self.w[f"{prefix}.bias"]))

    def _block(self, layer: int):
        c, p, x = self.c, f"h.{layer}", self.x
        H, D = c["num_heads"], c["d_model"]
        K, T = D // H, self.tokens.shape[0]
        h = self._norm(f"{p}.ln_attn", x, "attention") if c["ln_attn"] else x
        projections = [w for name in ("q_proj", "k_proj", "v_proj") for w in self._linear(f"{p}.attn.{name}")]
        qkv = [f"{p}.{name}" for name in ("q", "k", "v")]
        self.add(f"{p}.qkv", "linear", "attention",
                 lambda h, wq, bq, wk, bk, wv, bv: (h @ wq + bq, h @ wk + bk, h @ wv + bv), [h, *projections], qkv)
        self.add(f"{p}.scores", "linear", "attention",
                 lambda q, k: jnp.einsum("thk,shk->hts", q.reshape(T, H, K), k.reshape(T, H, K)),
                 qkv[:2], [f"{p}.scores"])
        if c["learnable_temperature"]:
            temperature = self.w[f"{p}.attn.temperature"][:, :T, None]
            scale = self.own(f"{p}.attn.scale", 1.0 / (math.sqrt(K) * temperature))  # the server's 1/(t sqrt K)
            self.add(f"{p}.softmax", "softmax", "attention", causal_softmax, [f"{p}.scores", scale], [f"{p}.probs"])
        else:
            self.add(f"{p}.softmax", "softmax", "attention", lambda s: causal_softmax(s, 1.0 / math.sqrt(K)),
                     [f"{p}.scores"], [f"{p}.probs"])
        out_kernel, out_bias = self._linear(f"{p}.attn.o_proj")
        self.add(f"{p}.attend", "linear", "attention",
                 lambda probs, v, w, b, x: x + jnp.einsum("hts,shk->thk", probs, v.reshape(T, H, K)).reshape(T, D)
                 @ w + b, [f"{p}.probs", qkv[2], out_kernel, out_bias, x], [f"{p}.x_attn"])
        self.x = f"{p}.x_attn"
        if layer in c["ffn_layers"]:
            self._ffn(layer)

    def _ffn(self, layer: int):
        c, p, x = self.c, f"h.{layer}", self.x
        h = self._norm(f"{p}.ln_ffn", x, "ffn") if c["ln_ffn"] else x
        if c["ffn_fused"]:
            kernel, bias = self._linear(f"{p}.ffn.fused")
            self.add(f"{p}.ffn", "linear", "ffn", lambda h, w, b: h @ w + b, [h, kernel, bias], [f"{p}.ffn"])
        else:
            kernel, bias = self._linear(f"{p}.ffn.fc_in")
            self.add(f"{p}.fc_in", "linear", "ffn", lambda h, w, b: h @ w + b, [h, kernel, bias], [f"{p}.fc_in"])
            activation, inputs = activation_fn(c), [f"{p}.fc_in"]
            if c["activation"] == "leaky_relu":
                inputs.append(self.own(f"{p}.ffn.slope", self.w[f"{p}.ffn.slope"]))
            if c["activation"] in ACTIVATION_KINDS:
                self.add(f"{p}.activation", ACTIVATION_KINDS[c["activation"]], "ffn", activation, inputs,
                         [f"{p}.activated"])
                inputs = [f"{p}.activated"]
            kernel, bias = self._linear(f"{p}.ffn.fc_out")
            self.add(f"{p}.fc_out", "linear", "ffn", lambda a, w, b: a @ w + b, [inputs[0], kernel, bias],
                     [f"{p}.ffn"])
        if c["residual_scale"]:
            beta = self.own(f"{p}.residual_scale", self.w[f"{p}.residual_scale"])
            self.add(f"{p}.residual", "rest", "ffn", lambda x, f, beta: beta * x + f, [x, f"{p}.ffn", beta],
                     [f"{p}.x_ffn"])
        else:
            self.add(f"{p}.residual", "rest", "ffn", lambda x, f: x + f, [x, f"{p}.ffn"], [f"{p}.x_ffn"])
        self.x = f"{p}.x_ffn"

    def _head(self):
        x = self._norm("ln_f", self.x, "model") if self.c["ln_final"] else self.x
        self.revealed = []
        for i, (start, stop) in enumerate(self.vocab_chunks()):
            table = self.own(f"head.{i}", self.w["wte.weight"][start:stop].T)
            self.add(f"head.{i}", "LM head", "model", lambda x, table: x @ table, [x, table], [f"logits.{i}"])
            self.revealed.append(f"logits.{i}")


def plaintext(program: Program) -> Dict[str, np.ndarray]:
    """Every value of the forward, computed in float32 by the same functions outside MPC."""
    values = {**program.server, **program.client, **program.shared}
    for segment in program.segments:
        outputs = jax.jit(segment.fn)(*(values[name] for name in segment.inputs))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        values.update({name: np.asarray(out) for name, out in zip(segment.outputs, outputs)})
    return values


# -- two parties, one process ---------------------------------------------------------------------------------


def runtime_config(protocol: str) -> libspu.RuntimeConfig:
    config = libspu.RuntimeConfig(protocol=PROTOCOLS[protocol], field=libspu.FieldType.FM64)
    config.fxp_fraction_bits = FRACTION_BITS
    config.experimental_enable_colocated_optimization = True  # weights the server owns: secret x owned products
    return config


def settings(config: libspu.RuntimeConfig) -> dict:
    return {"protocol": str(config.protocol).split(".")[-1], "field": str(config.field).split(".")[-1],
            "fxp_fraction_bits": config.fxp_fraction_bits, "exp_mode": str(config.fxp_exp_mode).split(".")[-1],
            "exp_iterations": config.fxp_exp_iters, "divide_iterations": config.fxp_div_goldschmidt_iters,
            "weights": "owned by party 1 (colocated optimisation)", "link": "in-process memory link"}


class Parties:
    """Party 0 and party 1 as two threads, each with one SPU runtime over an in-process link, kept alive
    between programs so that one-time protocol setup is paid once (in the warm-up)."""

    def __init__(self, config: libspu.RuntimeConfig):
        desc = libspu.link.Desc()
        desc.recv_timeout_ms = 4 * 3600 * 1000  # a large matmul keeps a party waiting for minutes
        for rank in range(2):
            desc.add_party(f"party{rank}", f"thread_{rank}")
        self.jobs = [queue.Queue() for _ in range(2)]
        self.results: queue.Queue = queue.Queue()
        self.threads = [threading.Thread(target=self._serve, args=(rank, desc, config), daemon=True)
                        for rank in range(2)]
        for thread in self.threads:
            thread.start()

    def _serve(self, rank: int, desc, config):
        party_config = libspu.RuntimeConfig(config)
        party_config.enable_pphlo_profile = rank == 0  # one party's view of the link is the whole traffic
        party_config.enable_hal_profile = False
        runtime = spu_api.Runtime(libspu.link.create_mem(desc, rank), party_config)
        while True:
            job = self.jobs[rank].get()
            try:
                self.results.put((rank, job(runtime), None))
            except BaseException as error:  # reported by the caller, in the main thread
                self.results.put((rank, None, error))

    def both(self, jobs) -> list:
        for rank in range(2):
            self.jobs[rank].put(jobs[rank])
        answers = sorted((self.results.get() for _ in range(2)), key=lambda answer: answer[0])
        for _, _, error in answers:
            if error is not None:
                raise error
        return [value for _, value, _ in answers]

    def share(self, io: spu_api.Io, name: str, value: np.ndarray, owner: int):
        shares = io.make_shares(value, libspu.Visibility.VIS_SECRET, owner_rank=owner)
        self.both([lambda rt, s=shares[rank]: rt.set_var(name, s) for rank in range(2)])

    def run(self, executable):
        self.both([lambda rt: rt.run(executable)] * 2)

    def reveal(self, io: spu_api.Io, name: str) -> np.ndarray:
        return io.reconstruct(self.both([lambda rt: rt.get_var(name)] * 2))

    def drop(self, name: str):
        self.both([lambda rt: rt.del_var(name)] * 2)


def compiled(fn: Callable, name: str, inputs, outputs, example_args) -> libspu.Executable:
    secret = [libspu.Visibility.VIS_SECRET] * len(inputs)
    executable, _ = frontend.compile(frontend.Kind.JAX, fn, example_args, {}, list(inputs), secret,
                                     lambda flat: list(outputs))
    return libspu.Executable(name=name, input_names=list(inputs), output_names=list(outputs), code=executable.code)


def warm_up(parties: Parties, io: spu_api.Io, config: dict):
    """One small program with every kind of operation the forward uses, so that the protocols' one-time setup
    (oblivious-transfer and HE keys) is not counted in the first segment that needs it."""
    a = np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8)
    w = np.linspace(-0.5, 0.5, 64, dtype=np.float32).reshape(8, 8)
    activation = activation_fn(config)

    def warm(a, w):
        h = a @ w
        probs = causal_softmax(jnp.stack([h[:, :4] @ h[:, 4:].T]), 0.5)[0]
        mixed = layer_norm(probs @ h, w[0], w[1], 1e-5) * w[2]
        act = activation(mixed, w[3, 0]) if config["activation"] == "leaky_relu" else activation(mixed)
        return act @ w + jnp.maximum(mixed, 0.0)

    parties.share(io, "warm.a", a, CLIENT)
    parties.share(io, "warm.w", w, SERVER)
    parties.run(compiled(warm, "warm_up", ["warm.a", "warm.w"], ["warm.out"], (a, w)))
    for name in ("warm.a", "warm.w", "warm.out"):
        parties.drop(name)


def private(program: Program, plain: Dict[str, np.ndarray], parties: Parties, io: spu_api.Io) -> Tuple[list, dict]:
    """Run every segment under MPC; (per-segment timings, the revealed logits chunks)."""
    for name, value in program.server.items():
        parties.share(io, name, value, SERVER)
    for name, value in program.client.items():
        parties.share(io, name, value, CLIENT)
    for name, value in program.shared.items():
        parties.share(io, name, value, NO_OWNER)
    last_use = {name: index for index, segment in enumerate(program.segments) for name in segment.inputs}
    timings = []
    for index, segment in enumerate(program.segments):
        executable = compiled(segment.fn, segment.name, segment.inputs, segment.outputs,
                              [plain[name] for name in segment.inputs])
        print(f"{SEGMENT_MARK} {index + 1}/{len(program.segments)} {segment.name} {segment.kind}", flush=True)
        cpu, wall = time.process_time(), time.perf_counter()
        parties.run(executable)
        timings.append({"name": segment.name, "kind": segment.kind, "site": segment.site,
                        "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        for name in segment.inputs:  # shares no later program reads: freed, as a long forward needs
            if last_use[name] == index and name not in program.revealed:
                parties.drop(name)
    return timings, {name: parties.reveal(io, name) for name in program.revealed}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a folder with config.json, model.safetensors, tokens.json")
    parser.add_argument("--layers", type=int, required=True, help="how many of the first blocks to run")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cheetah")
    parser.add_argument("--blocks-only", action="store_true", help="only the blocks, from the embedded tokens")
    parser.add_argument("--result", required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(args.model, "tokens.json")) as f:
        tokens = np.asarray(json.load(f), np.int64)
    program = Program(config, load_file(os.path.join(args.model, "model.safetensors")), tokens, args.layers,
                      blocks_only=args.blocks_only).build()
    plain = plaintext(program)
    spu_config = runtime_config(args.protocol)
    io, parties = spu_api.Io(2, spu_config), Parties(spu_config)
    start = time.perf_counter()
    warm_up(parties, io, config)
    warm_up_s = time.perf_counter() - start
    timings, revealed = private(program, plain, parties, io)
    logits = np.concatenate([revealed[name] for name in program.revealed], axis=-1)
    reference = np.concatenate([plain[name] for name in program.revealed], axis=-1)
    result = {"segments": timings, "settings": settings(spu_config), "warm_up_s": warm_up_s,
              "seq_len": int(tokens.shape[0]), "layers": args.layers,
              "private_output": logits.tolist(), "plaintext_output": reference.tolist()}
    with open(args.result, "w") as f:
        json.dump(result, f)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
