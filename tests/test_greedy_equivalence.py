"""Greedy speculative decoding returns exactly ``model.generate(do_sample=False)``, token for token."""
import pytest
import torch

import specdec
from conftest import tiny_llama
from scripted import ScriptedDrafter, noisy_copy
from specdec import drafters

VOCAB = 64


@pytest.fixture(scope="module")
def target():
    return tiny_llama(VOCAB, seed=0, eos_token_id=None, pad_token_id=0)


def prompt(length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (1, length), generator=g)


def reference(model, ids, max_new_tokens, eos=None):
    model.generation_config.eos_token_id = eos
    return model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)


def make_drafter(kind: str, target, k: int, ref: torch.Tensor):
    if kind == "self":  # the target drafting for itself: every draft is accepted
        return drafters.DraftModel(target, num_tokens=k)
    if kind == "independent":  # an unrelated model: (almost) nothing is accepted
        return drafters.DraftModel(tiny_llama(VOCAB, seed=7, eos_token_id=None), num_tokens=k)
    if kind == "noisy":  # a noisy copy of the target: some of each draft is accepted
        return drafters.DraftModel(noisy_copy(target, 0.5), num_tokens=k)
    if kind == "truncated":
        return drafters.DraftModel.from_target_layers(target, 1, num_tokens=k)
    if kind == "prompt_lookup":
        return drafters.PromptLookup(num_tokens=k, max_ngram=3)
    if kind.startswith("scripted"):
        right = int(kind.split("-")[1])
        return ScriptedDrafter(ref, VOCAB, right=min(right, k), num_tokens=k)
    raise ValueError(kind)


KINDS = ["self", "independent", "noisy", "truncated", "prompt_lookup", "scripted-0", "scripted-1", "scripted-3"]


def test_plain_decoding_matches_generate(target):
    """drafter=None decodes through the same engine and matches generate for several prompt lengths."""
    for length in (1, 2, 9):
        ids = prompt(length, seed=length)
        ref = reference(target, ids, 20)
        out = specdec.generate(target, ids, max_new_tokens=20, eos_token_id=[])
        assert torch.equal(out.sequences, ref)
        assert out.stats.steps == 20 and out.stats.tokens_generated == 20


@pytest.mark.parametrize("k", [1, 4, 7])
@pytest.mark.parametrize("kind", KINDS)
def test_every_drafter_matches_generate(target, kind, k):
    """Every drafter, whatever it gets accepted, reproduces greedy generate exactly."""
    ids = prompt(6, seed=k)
    ref = reference(target, ids, 24)
    out = specdec.generate(target, ids, make_drafter(kind, target, k, ref), max_new_tokens=24, eos_token_id=[])
    assert torch.equal(out.sequences, ref)
    assert out.stats.tokens_generated == 24
    assert sum(out.stats.accepted_histogram.values()) == out.stats.steps


def test_acceptance_is_as_scripted(target):
    """A drafter right for exactly j tokens gets exactly j accepted per step (bonus aside)."""
    ids = prompt(5, seed=3)
    ref = reference(target, ids, 40)
    for right, k in [(0, 4), (2, 4), (4, 4)]:
        out = specdec.generate(target, ids, ScriptedDrafter(ref, VOCAB, right, k), max_new_tokens=40, eos_token_id=[])
        assert torch.equal(out.sequences, ref)
        full_steps = {n: c for n, c in out.stats.accepted_histogram.items()}
        # every step but possibly the last (clipped by the budget) accepts exactly `right`
        assert max(full_steps, key=full_steps.get) == right
    self_draft = specdec.generate(target, ids, drafters.DraftModel(target, 4), max_new_tokens=40, eos_token_id=[])
    assert self_draft.stats.steps == 8  # 5 tokens per step: 4 accepted + 1 bonus


@pytest.mark.parametrize("kind", KINDS)
def test_stops_at_eos_like_generate(target, kind):
    """With an EOS token that occurs mid-draft, output stops exactly where generate stops."""
    ids = prompt(6, seed=11)
    free = reference(target, ids, 30)
    continuation = free[0, ids.shape[1]:].tolist()
    eos = continuation[9]  # stops at its first occurrence, at index <= 9
    ref = reference(target, ids, 30, eos=eos)
    assert ref.shape[1] < free.shape[1]
    for k in (1, 4, 7):
        out = specdec.generate(target, ids, make_drafter(kind, target, k, free), max_new_tokens=30, eos_token_id=eos)
        assert torch.equal(out.sequences, ref)
    target.generation_config.eos_token_id = eos  # the default EOS comes from the generation config
    try:
        out = specdec.generate(target, ids, make_drafter(kind, target, 4, free), max_new_tokens=30)
    finally:
        target.generation_config.eos_token_id = None
    assert torch.equal(out.sequences, ref)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 5, 13])
def test_stops_exactly_at_max_new_tokens(target, max_new_tokens):
    """A draft longer than the remaining budget never makes the output longer than asked."""
    ids = prompt(4, seed=5)
    ref = reference(target, ids, max_new_tokens)
    for drafter in (drafters.DraftModel(target, 7), drafters.PromptLookup(7, 3)):
        out = specdec.generate(target, ids, drafter, max_new_tokens=max_new_tokens, eos_token_id=[])
        assert out.sequences.shape[1] == ids.shape[1] + max_new_tokens
        assert torch.equal(out.sequences, ref)


def test_fills_the_context_exactly(target):
    """Prompt + max_new_tokens equal to the model's context is allowed and matches generate."""
    limit = target.config.max_position_embeddings
    ids = prompt(limit - 12, seed=2)
    ref = reference(target, ids, 12)
    out = specdec.generate(target, ids, drafters.DraftModel(target, 7), max_new_tokens=12, eos_token_id=[])
    assert torch.equal(out.sequences, ref)


def test_float32_target_and_speculation_override(target):
    """speculation=int overrides the drafter's length; stats count every step and forward."""
    ids = prompt(5, seed=9)
    ref = reference(target, ids, 16)
    out = specdec.generate(target, ids, drafters.DraftModel(target, 7), max_new_tokens=16, eos_token_id=[],
                           speculation=3)
    assert torch.equal(out.sequences, ref)
    assert out.stats.steps == 4 and out.stats.target_forwards == 5  # prefill + 4 verifications
    off = specdec.generate(target, ids, drafters.DraftModel(target, 7), max_new_tokens=16, eos_token_id=[],
                           speculation=0)
    assert torch.equal(off.sequences, ref) and off.stats.steps == 16
