"""LeanLlama (the draft LMs' fast forward) computes what Hugging Face's LlamaModel computes.

Every forward a draft cache makes during real decoding (ragged catch-ups with padding, chain
feeds, tree feeds through 4D masks) is recorded once through LeanLlama and once through the
Hugging Face decoder, and the outputs must agree to float64 rounding.
"""
import pytest
import torch
from conftest import tiny_llama

import specdec
from specdec import drafters
from specdec.target import lean_llama
from specdec.drafters import draft_cache

VOCAB = 64


def _recorded_runs(monkeypatch, target, make_drafter, ids, mask, lean: bool) -> list[torch.Tensor]:
    outputs = []
    original = draft_cache.DraftCache._lm

    def recording(self, logits_to_keep, subset=False):
        if not lean:
            self.lean = None
        run = original(self, logits_to_keep, subset)

        def wrapped(*args):
            out = run(*args)
            outputs.append(out.clone())
            return out
        return wrapped

    monkeypatch.setattr(draft_cache.DraftCache, "_lm", recording)
    specdec.generate(target, ids, make_drafter(), attention_mask=mask, max_new_tokens=20, eos_token_id=[])
    monkeypatch.setattr(draft_cache.DraftCache, "_lm", original)
    return outputs


@pytest.mark.parametrize("kind,sdpa_gqa", [("chain", True), ("tree", True), ("chain", False)])
def test_lean_forward_equals_hugging_face(monkeypatch, kind, sdpa_gqa):
    monkeypatch.setattr(lean_llama, "_SDPA_GQA", sdpa_gqa)  # False: grouped heads repeated (torch < 2.5)
    target = tiny_llama(VOCAB, seed=0, eos_token_id=None, pad_token_id=0)
    draft = tiny_llama(VOCAB, seed=3, num_layers=2, hidden=32, heads=4, kv_heads=2)
    assert lean_llama.supports(draft)
    ids = torch.randint(3, VOCAB, (3, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # ragged rows: left padding of different widths
    mask[2, :1] = 0
    if kind == "chain":
        def make():
            return drafters.DraftModel(draft, num_tokens=3)
    else:
        def make():
            return drafters.RecursiveTree(draft, (3, 2, 1), max_nodes=8)
    lean = _recorded_runs(monkeypatch, target, make, ids, mask, lean=True)
    reference = _recorded_runs(monkeypatch, target, make, ids, mask, lean=False)
    assert len(lean) == len(reference) > 5
    for ours, theirs in zip(lean, reference):
        assert ours.shape == theirs.shape
        finite = torch.isfinite(theirs)
        assert torch.equal(finite, torch.isfinite(ours))
        torch.testing.assert_close(ours[finite], theirs[finite], rtol=1e-9, atol=1e-9)


def test_only_plain_llamas_run_lean():
    assert lean_llama.supports(tiny_llama(VOCAB))
    assert not lean_llama.supports(tiny_llama(VOCAB, attention_bias=True))
    assert not lean_llama.supports(tiny_llama(VOCAB, hidden_act="gelu"))
    with pytest.raises(ValueError, match="plain Llama"):
        lean_llama.LeanLlama(tiny_llama(VOCAB, mlp_bias=True))


def test_fused_weights_are_built_once_and_follow_weight_changes():
    draft = tiny_llama(VOCAB, seed=3)
    first = lean_llama.LeanLlama.for_model(draft)
    assert lean_llama.LeanLlama.for_model(draft) is first  # not rebuilt for every decode
    with torch.no_grad():
        draft.model.layers[0].self_attn.q_proj.weight.mul_(2.0)
    again = lean_llama.LeanLlama.for_model(draft)
    assert again is not first
    assert torch.equal(again.layers[0]["qkv"][0][:32], draft.model.layers[0].self_attn.q_proj.weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotary_table_holds_the_modules_numbers_and_grows(dtype):
    model = tiny_llama(VOCAB, dtype=dtype)
    rotary = model.model.rotary_emb
    table = lean_llama.RotaryTable(rotary)
    assert table.static
    like = torch.zeros(2, 3, 32, dtype=dtype)
    for positions in (torch.tensor([[0, 5, 9], [3, 4, 1000]]), torch.tensor([[1023, 1024, 4000], [7, 2, 0]])):
        ours, theirs = table(like, positions), rotary(like, positions)
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))  # bit for bit, before and after growing
    assert table.tables[(dtype, like.device)][0].shape[0] > 4000


def test_rotary_types_that_rescale_with_length_call_the_module():
    model = tiny_llama(VOCAB, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    assert not lean_llama.RotaryTable(model.model.rotary_emb).static


def test_float32_norm_equals_llama_rmsnorm_bit_for_bit():
    model = tiny_llama(VOCAB, dtype=torch.float32, hidden=64, heads=4)
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight.normal_()
    lean = lean_llama.LeanLlama(model)
    hidden = torch.randn(3, 5, 64) * 7
    norm = model.model.layers[0].input_layernorm
    assert torch.equal(lean._norm(hidden, lean.layers[0]["norm_in"]), norm(hidden))


def test_a_draft_built_inside_inference_mode_decodes():
    """A drafter loaded inside torch.inference_mode has inference-tensor weights (no version counter)."""
    target = tiny_llama(64, seed=0)
    ids = torch.tensor([[5, 6, 7, 8]])
    want = target.generate(ids, max_new_tokens=6, do_sample=False)
    with torch.inference_mode():
        draft = tiny_llama(64, seed=1)
        out = specdec.generate(target, ids, drafters.DraftModel(draft, 2), max_new_tokens=6, speculation=2)
    assert torch.equal(out.sequences, want)


@pytest.mark.parametrize("mask_kind", ["causal", "padded", "additive"])
def test_folded_grouped_attention_computes_the_same_attention(mask_kind):
    """Query heads folded into one per key/value head (a verification's 3-64 tokens) attend as they did apart."""
    g = torch.Generator().manual_seed(0)
    b, heads, kv_heads, m, past, d = 2, 6, 2, 5, 7, 8
    q = torch.randn(b, heads, m, d, generator=g, dtype=torch.float64)
    keys, values = (torch.randn(b, kv_heads, past + m, d, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.ones(m, past + m, dtype=torch.bool).tril(past)
    if mask_kind == "padded":
        real = torch.ones(b, past + m, dtype=torch.bool)
        real[0, :3] = False
        mask = mask[None, None] & real[:, None, None]
    elif mask_kind == "additive":
        mask = torch.zeros(b, 1, m, past + m, dtype=torch.float64).masked_fill(
            torch.rand(b, 1, m, past + m, generator=g) < 0.3, torch.finfo(torch.float64).min)
        mask[..., past:] = 0.0
    apart = lean_llama.grouped_attention(q, keys, values, mask, heads // kv_heads)
    folded = lean_llama.grouped_attention(q, keys, values, lean_llama.fold_mask(mask, heads // kv_heads, q.dtype),
                                          heads // kv_heads, folded=True)
    torch.testing.assert_close(folded, apart, rtol=1e-12, atol=1e-12)
    wrong = lean_llama.fold_mask(mask.flip(-2), heads // kv_heads, q.dtype)
    assert not torch.allclose(lean_llama.grouped_attention(q, keys, values, wrong, heads // kv_heads, folded=True),
                              apart)  # the rows of the folded mask must follow the folded queries


def test_verifications_of_three_or_more_tokens_take_the_folded_path(monkeypatch):
    calls = []
    real = lean_llama.fold_mask
    monkeypatch.setattr(lean_llama, "fold_mask", lambda *a: calls.append(a[0].shape) or real(*a))
    target = tiny_llama(VOCAB, seed=0, eos_token_id=None)
    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6]])  # prompt lookup proposes 3 tokens below the root
    out = specdec.generate(target, ids, drafters.PromptLookup(3), max_new_tokens=8, speculation=3)
    verifications = [shape for shape in calls if shape[-1] > shape[-2] >= 3]  # new tokens after a cache
    assert verifications and torch.equal(out.sequences, target.generate(ids, max_new_tokens=8, do_sample=False))
