"""Every common decoder family, from tiny random float64 configs: greedy output is the model's own, token for token.

Llama, Qwen2 (with and without sliding windows), Qwen3, Mistral (sliding window), Phi-3, Gemma 2
and Gemma 3 (sliding and global layers, soft-capping), and two older families with their own
position handling (GPT-NeoX, GPT-2).  Windows are 6 tokens, far shorter than the sequences, so
rows longer than the window are exercised; a family with recurrent layers is refused by name.
"""
import pytest
import torch
import transformers as T

import specdec
from exact_randomness import enumerate_law
from scripted import noisy_copy
from specdec import drafters
from specdec.inputs import left_padded

VOCAB = 64
PAD = 0
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512)
FAMILIES = {
    "llama": lambda: T.LlamaConfig(**COMMON),
    "qwen2": lambda: T.Qwen2Config(**COMMON),
    "qwen2_sliding": lambda: T.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=6, max_window_layers=2),
    "qwen3": lambda: T.Qwen3Config(**COMMON, head_dim=8),
    "mistral": lambda: T.MistralConfig(**COMMON, sliding_window=6),
    "phi3": lambda: T.Phi3Config(**COMMON, pad_token_id=PAD),
    "gemma2": lambda: T.Gemma2Config(**COMMON, head_dim=8, sliding_window=6, attn_logit_softcapping=50.0,
                                     final_logit_softcapping=30.0),
    "gemma3": lambda: T.Gemma3TextConfig(**COMMON, head_dim=8, sliding_window=6, sliding_window_pattern=2),
    "gpt_neox": lambda: T.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=512),
    "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=512),
}


def build(family: str, seed: int = 0, vocab: int = VOCAB):
    config = FAMILIES[family]()
    config.vocab_size = vocab
    for key in ("bos_token_id", "eos_token_id"):  # the defaults point outside a tiny vocabulary
        setattr(config, key, None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T.AutoModelForCausalLM.from_config(config).to(torch.float64).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    return model


def drafter_of(kind: str, model):
    if kind == "chain":
        return drafters.DraftModel(noisy_copy(model, 0.3), 3)
    if kind == "lookup":
        return drafters.PromptLookup(4, 2)
    return drafters.RecursiveTree(noisy_copy(model, 0.3), (2, 2, 1))


def reference_rows(model, rows, max_new_tokens, eos):
    tails = []
    for row in rows:
        out = model.generate(torch.tensor([row]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=PAD,
                             eos_token_id=eos)
        tails.append(out[0, len(row):].tolist())
    return tails


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request):
    return request.param, build(request.param)


@pytest.mark.parametrize("kind", ["chain", "lookup", "tree"])
def test_greedy_matches_generate_at_batch_one(family_model, kind):
    family, model = family_model
    ids = torch.randint(3, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    want = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=PAD)
    got = specdec.generate(model, ids, drafter_of(kind, model), max_new_tokens=20, eos_token_id=[])
    assert torch.equal(got.sequences, want), family


@pytest.mark.parametrize("kind", ["chain", "lookup", "tree"])
def test_greedy_matches_generate_in_a_padded_batch_with_eos(family_model, kind):
    """Each row equals its own batch-size-1 ``generate`` (windows shorter than the prompts), and the batch
    equals ``model.generate`` on the same left-padded input, padding after EOS included.

    Except Gemma 2's batch in Hugging Face itself: its eager attention takes a float32 softmax of a
    float64 model's fully masked padding rows, which is NaN and reaches the real tokens; specdec's
    prefill mask lets a padding query see itself, so its rows stay right (its batch-1 check stays).
    """
    family, model = family_model
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (3, 11, 7)]
    eos = reference_rows(model, rows, 16, None)[1][9]  # a token the longest row emits: it ends there
    ids, mask = left_padded(rows, "cpu")
    want = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=eos,
                          pad_token_id=PAD)
    out = specdec.generate(model, ids, drafter_of(kind, model), attention_mask=mask, max_new_tokens=16,
                           eos_token_id=eos, pad_token_id=PAD)
    if family != "gemma2":
        assert torch.equal(out.sequences, want), family
    assert len(set(out.stats.row_tokens)) > 1  # rows ended at different lengths
    tails = reference_rows(model, rows, 16, eos)
    for r, tail in enumerate(tails):
        assert out.sequences[r, ids.shape[1]:ids.shape[1] + len(tail)].tolist() == tail, (family, r)


@pytest.mark.slow
def test_sampling_is_lossless_with_a_sliding_window():
    """A six-token Mistral whose window (2) is shorter than the sequence: the sampled law is exactly its own."""
    from test_sampling_lossless import exact_law

    config = T.MistralConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, sliding_window=2,
                             bos_token_id=None, eos_token_id=None, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        target = T.MistralForCausalLM(config).to(torch.float64).eval()
        torch.manual_seed(4)
        draft = T.MistralForCausalLM(config).to(torch.float64).eval()
    with torch.no_grad():
        target.lm_head.weight.mul_(6)
    prompt = torch.tensor([[1, 4, 2, 5]])
    sampling = specdec.SamplingConfig(do_sample=True)
    expected = exact_law(target, 2, sampling, prompt=prompt)
    for drafter in (drafters.DraftModel(draft, 2), drafters.RecursiveTree(draft, (2, 1))):
        law = enumerate_law(lambda rng: tuple(specdec.generate(
            target, prompt, drafter, max_new_tokens=2, do_sample=True, eos_token_id=[],
            randomness=rng).sequences[0, 4:].tolist()))
        assert abs(sum(law.values()) - 1) < 1e-9
        assert max(abs(law[s] - expected[s]) for s in expected) < 1e-9
    # the window matters: the same model without it has another law
    wide = T.MistralForCausalLM(T.MistralConfig(**{**config.to_dict(), "sliding_window": None})).to(torch.float64)
    wide.load_state_dict(target.state_dict())
    assert max(abs(v - exact_law(wide.eval(), 2, sampling, prompt=prompt)[s]) for s, v in expected.items()) > 1e-6


def test_a_family_with_recurrent_layers_is_refused_by_name():
    config = T.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2)
    model = T.MambaForCausalLM(config).eval()
    with pytest.raises(NotImplementedError, match="mamba models keep .*LinearAttentionLayer"):
        specdec.generate(model, torch.tensor([[3, 4, 5]]), max_new_tokens=2)
