"""The torch export generates: its key/value cache gives the logits of full passes at every position of
left-padded prompts, and greedy `generate`, through transformers and through the file's own `aero_generate`,
gives aero_jax.sample's tokens, for one preset per mechanism; both stop at the config's end of text and refuse
(or warn about) prompts whose padding cannot be right."""

import functools
import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_script, small_config

torch = pytest.importorskip("torch")

from aero_jax import sample  # noqa: E402
from aero_jax.export.parity import moved_model, torch_model  # noqa: E402
from aero_jax.model import logits_and_entropy  # noqa: E402

SIZE = dict(size="tiny", num_layers=3, vocab_size=257, max_len=32)
TOLERANCE = 1e-4
# LayerNorm and GELU, ReLU, learnable leaky slopes, fused and pruned FFNs, temperatures and EReg, weight norm,
# spectral norm
MECHANISMS = ["SM+LN+G", "SM+LN+R", "SM+LReLU(learnable per layer)", "SM+ScFuFFN[FFN:L/2]", "EReg(SM(t)+ScFuFFN)",
              "SM+WNorm(QK+FFN)", "SM+SNorm(QK+FFN)"]
PROMPTS = [[5, 60, 7, 80, 9, 100], [110, 12], [13, 140, 15, 16]]


def left_padded(prompts, pad: int = 0):
    longest = max(map(len, prompts))
    ids = torch.tensor([[pad] * (longest - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("name", MECHANISMS)
def test_cached_decoding_of_left_padded_prompts_gives_the_logits_of_full_passes(name):
    model, params, state = moved_model(name, **SIZE)
    exported = torch_model(model.config, params, state)
    continuation = [[3, 200, 4], [250, 1, 2], [9, 9, 9]]
    ids, mask = left_padded(PROMPTS)
    with torch.no_grad():
        out = exported(ids, attention_mask=mask, use_cache=True)
        steps = [out.logits[:, -1]]
        for i in range(3):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = exported(torch.tensor([[c[i]] for c in continuation]), attention_mask=mask,
                           past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits[:, -1])
    for row, prompt in enumerate(PROMPTS):
        full = np.asarray(prompt + continuation[row])
        logits, _, _ = logits_and_entropy(model, {"params": params, **state}, jnp.asarray(full[None]))
        expected = np.asarray(logits[0, len(prompt) - 1:])  # the positions that predict each new token
        np.testing.assert_allclose(torch.stack(steps, 1)[row].numpy(), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", MECHANISMS)
def test_greedy_generation_equals_aero_sample(name):
    model, params, state = moved_model(name, seed=3, **SIZE)
    exported = torch_model(model.config, params, state)
    expected = sample.generate(model, {"params": params, **state}, PROMPTS, max_new_tokens=12, temperature=0)
    ids, mask = left_padded(PROMPTS)
    plain = exported.aero_generate(ids, attention_mask=mask, max_new_tokens=12)
    with torch.no_grad():
        through_transformers = exported.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                                 pad_token_id=0)
    assert plain[:, ids.shape[1]:].tolist() == expected.tolist()
    assert through_transformers[:, ids.shape[1]:].tolist() == expected.tolist()


def test_sampling_is_reproducible_and_its_extremes_are_greedy():
    model, params, state = moved_model("EReg(SM(t)+ScFuFFN)", **SIZE)
    exported = torch_model(model.config, params, state)
    ids, mask = left_padded(PROMPTS)

    def sampled(seed, **how):
        return exported.aero_generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=True,
                                      generator=torch.Generator().manual_seed(seed), **how)

    greedy = exported.aero_generate(ids, attention_mask=mask, max_new_tokens=10)
    assert torch.equal(sampled(0, temperature=1.5), sampled(0, temperature=1.5))
    assert not torch.equal(sampled(0, temperature=1.5), sampled(1, temperature=1.5))
    assert torch.equal(sampled(0, top_k=1), greedy)
    assert torch.equal(sampled(0, top_p=1e-6), greedy)

    def through_transformers(seed):
        torch.manual_seed(seed)
        return exported.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=True, temperature=1.5,
                                 top_k=0, pad_token_id=0)

    assert torch.equal(through_transformers(0), through_transformers(0))


def test_an_end_of_text_token_ends_a_row():
    model, params, state = moved_model("SM+LN+G", seed=3, **SIZE)
    exported = torch_model(model.config, params, state)
    ids, mask = left_padded(PROMPTS)
    greedy = exported.aero_generate(ids, attention_mask=mask, max_new_tokens=6)
    new = greedy[0, ids.shape[1]:].tolist()
    eos = new[1]  # row 0's second new token: it ends the row where it first appears
    stop = new.index(eos) + 1
    stopped = exported.aero_generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=256)
    row = stopped[0, ids.shape[1]:].tolist()
    assert row[:stop] == new[:stop] and set(row[stop:]) <= {256}


def test_a_bfloat16_export_keeps_temperatures_and_scalars_in_float32(tmp_path):
    import json

    from safetensors.numpy import load_file

    from aero_jax.export import aero_config, fold, save_tensors
    from aero_jax.export.parity import load_modeling

    model, params, state = moved_model("EReg(SM(t)+ScFuFFN)", **SIZE)
    save_tensors(fold.plain_tensors(model.config, params, state), str(tmp_path / "model.safetensors"), "bfloat16")
    (tmp_path / "config.json").write_text(json.dumps(aero_config(model.config, {})))
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert stored["h.0.attn.temperature"].dtype == np.float32 and stored["h.0.residual_scale"].dtype == np.float32
    assert stored["wte.weight"].dtype != np.float32
    loaded = load_modeling().AeroForCausalLM.from_pretrained(str(tmp_path))
    assert loaded.wte.weight.dtype == torch.bfloat16
    assert loaded.h[0].attn.temperature.dtype == torch.float32 and loaded.h[0].residual_scale.dtype == torch.float32
    assert load_modeling().FLOAT32_BUFFERS == fold.FLOAT32_TENSORS


@pytest.mark.slow
def test_the_export_generates_what_aero_sample_prints(corpus, tmp_path):
    """Through the console scripts: a trained run's `aero-sample --temperature 0` and its torch export's generate
    (AutoModelForCausalLM, remote code) on the same prompts, left-padded in one batch, stopping at end of text
    (the export's config names it)."""
    transformers = pytest.importorskip("transformers")
    from aero_jax.data import ByteTokenizer
    from aero_jax.trainer import train

    workdir, out = tmp_path / "run", tmp_path / "export"
    train(small_config(corpus), str(workdir))  # EReg(SM(t)+ScFuFFN), bytes, max_len 32
    prompts = ["def f(x):", "import os", "a = "]
    printed = run_script("aero-sample", "--workdir", workdir, *[a for p in prompts for a in ("--prompt", p)],
                         "--temperature", 0, "--max-new-tokens", 16, "--json")
    assert printed.returncode == 0, printed.stderr[-2000:]
    expected = [json.loads(line)["tokens"] for line in printed.stdout.splitlines()]
    assert run_script("aero-export", "--workdir", workdir, "--out", out, "--format", "torch").returncode == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    tokenizer = ByteTokenizer()
    ids, mask = left_padded([tokenizer.encode(p) for p in prompts])
    with torch.no_grad():
        generated = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    for row, tokens in enumerate(generated[:, ids.shape[1]:].tolist()):
        assert (tokens[:tokens.index(tokenizer.eot_id)] if tokenizer.eot_id in tokens else tokens) == expected[row]


@functools.lru_cache
def exported_tensors(name: str):
    """(model config, state dict) of the greedy model of test_an_end_of_text_token_ends_a_row, made once per preset."""
    model, params, state = moved_model(name, seed=3, **SIZE)
    return model.config, torch_model(model.config, params, state).state_dict()


def stopping_at(eos, name: str = "SM+LN+G"):
    """That model exported with `eos` as its end-of-text (and pad) id, as aero-export writes the tokenizer's."""
    from aero_jax.export import aero_config
    from aero_jax.export.parity import load_modeling

    c, tensors = exported_tensors(name)
    modeling = load_modeling()
    exported = modeling.AeroForCausalLM(modeling.AeroConfig.from_fields(aero_config(c, {}, eot_id=eos)))
    exported.load_state_dict(tensors)
    return exported.eval()


def test_generation_stops_at_the_configs_end_of_text_by_default():
    ids, mask = left_padded(PROMPTS)
    P = ids.shape[1]
    unstopped = stopping_at(None, "EReg(SM(t)+ScFuFFN)").aero_generate(ids, attention_mask=mask, max_new_tokens=8)
    eos = unstopped[1, P + 1].item()  # row 1's second new token; unstopped, the row moves on to another one later
    assert unstopped[1, P + 2:].ne(eos).any()
    model = stopping_at(eos, "EReg(SM(t)+ScFuFFN)")
    plain = model.aero_generate(ids, attention_mask=mask, max_new_tokens=8)
    with torch.no_grad():
        through_transformers = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert plain[1, P:].tolist() == unstopped[1, P:P + 2].tolist() + [eos] * 6  # then the pad id, end of text
    assert torch.equal(through_transformers, plain)


@pytest.mark.parametrize("how", ["aero_generate", "generate", "forward"])
def test_an_empty_prompt_is_refused_in_one_error(how):
    model = stopping_at(eos=256)
    with pytest.raises(ValueError, match=r"input_ids of shape \[1, 0\] is invalid; accepted: .*at least one token"):
        with torch.no_grad():
            getattr(model, how)(torch.zeros((1, 0), dtype=torch.long))


@pytest.mark.parametrize("how", ["aero_generate", "generate"])
def test_right_padded_prompts_and_rows_of_padding_are_refused(how):
    model = stopping_at(eos=256)
    ids, mask = left_padded(PROMPTS, pad=256)
    right_ids, right_mask = ids.flip(1), mask.flip(1)
    with pytest.raises(ValueError, match=r"attention_mask marks the last prompt token of rows \[1, 2\] as padding"):
        getattr(model, how)(right_ids, attention_mask=right_mask, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"rows \[1\] as padding.*accepted: left-padded prompts"):
        getattr(model, how)(ids, attention_mask=mask * torch.tensor([[1], [0], [1]]), max_new_tokens=2)


def test_a_batch_without_attention_mask_is_warned_about():
    model = stopping_at(eos=256)
    ids, _ = left_padded(PROMPTS, pad=256)
    with pytest.warns(UserWarning, match="without attention_mask.*pass attention_mask"):
        model.aero_generate(ids, max_new_tokens=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.aero_generate(ids[:1], max_new_tokens=2)  # one row: nothing to pad
