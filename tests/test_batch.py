"""Ragged batches (EQSPEC): every row equals its own batch-size-1 greedy generate, and sampling stays exact."""
import pytest
import torch

import specdec
from conftest import tiny_llama
from exact_randomness import enumerate_law
from scripted import noisy_copy
from specdec import drafters
from specdec.inputs import left_padded
from test_sampling_lossless import chi_square_pvalue, exact_law
from test_sampling_lossless import models as small_models

VOCAB = 64
PAD = 0


@pytest.fixture(scope="module")
def target():
    return tiny_llama(VOCAB, seed=0, eos_token_id=None, pad_token_id=PAD)


def prompts(batch: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [1, 2, 5, 11, 23, 40, 3, 17][: max(batch, 1)] * (batch // 8 + 1)
    return [torch.randint(3, VOCAB, (lengths[i],), generator=g).tolist() for i in range(batch)]


def row_reference(model, prompt: list[int], max_new_tokens: int, eos) -> list[int]:
    model.generation_config.eos_token_id = eos
    try:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=PAD)
    finally:
        model.generation_config.eos_token_id = None
    return out[0, len(prompt):].tolist()


def expected_batch(model, rows, max_new_tokens, eos, pad):
    ids, mask = left_padded(rows, "cpu")
    ids = ids.masked_fill(mask == 0, pad)
    tails = [row_reference(model, r, max_new_tokens, eos) for r in rows]
    width = max(map(len, tails))
    tail = torch.tensor([t + [pad] * (width - len(t)) for t in tails])
    return ids, mask, torch.cat([ids, tail], dim=1)


def make(kind, target):
    return {
        "none": lambda: None,
        "self": lambda: drafters.DraftModel(target, 4),
        "noisy": lambda: drafters.DraftModel(noisy_copy(target, 0.5), 3),
        "lookup": lambda: drafters.PromptLookup(5, 3),
        "tree": lambda: drafters.RecursiveTree(noisy_copy(target, 0.3), (3, 2)),
    }[kind]()


@pytest.mark.parametrize("batch", [2, 3, 8, 16])
@pytest.mark.parametrize("kind", ["none", "self", "noisy", "lookup", "tree"])
def test_rows_match_their_own_generate(target, batch, kind):
    """Left-padded rows of very different lengths each reproduce batch-size-1 greedy generate."""
    rows = prompts(batch, seed=batch)
    ids, mask, expected = expected_batch(target, rows, 20, None, PAD)
    out = specdec.generate(target, ids, make(kind, target), attention_mask=mask, max_new_tokens=20,
                           eos_token_id=[], pad_token_id=PAD)
    assert torch.equal(out.sequences, expected)
    assert out.stats.row_tokens == [20] * batch


@pytest.mark.parametrize("kind", ["none", "self", "noisy", "lookup", "tree"])
@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_eos_in_some_rows(target, kind, pad_is_eos):
    """Rows that hit EOS stop (and are padded) exactly as generate stops them; pad may equal EOS."""
    rows = prompts(8, seed=31)
    free = [row_reference(target, r, 24, None) for r in rows]
    eos = free[2][6]  # ends row 2 early; other rows may or may not contain it
    pad = eos if pad_is_eos else PAD
    ids, mask, expected = expected_batch(target, rows, 24, eos, pad)
    lengths = [len(row_reference(target, r, 24, eos)) for r in rows]
    assert min(lengths) < 24  # some row finishes early
    out = specdec.generate(target, ids, make(kind, target), attention_mask=mask, max_new_tokens=24,
                           eos_token_id=eos, pad_token_id=pad)
    assert torch.equal(out.sequences, expected)
    assert out.stats.row_tokens == lengths


def test_realignment_is_counted(target):
    """Rows accepting different lengths force realignments; the stats report their share."""
    rows = prompts(4, seed=7)
    ids, mask, expected = expected_batch(target, rows, 30, None, PAD)
    out = specdec.generate(target, ids, make("noisy", target), attention_mask=mask, max_new_tokens=30,
                           eos_token_id=[], pad_token_id=PAD)
    assert torch.equal(out.sequences, expected)
    assert out.stats.realignments > 0 and 0 <= out.stats.aligned_fraction < 1
    assert 0 < out.stats.realign_seconds < out.stats.total_seconds


def test_exact_law_in_a_batch():
    """Two rows sampled together: the joint law is exactly the product of the target's laws."""
    target, draft = small_models()
    config = specdec.SamplingConfig(do_sample=True, top_k=3)
    rows = [[1, 4, 2], [3, 1, 5, 5, 2]]
    ids, mask = left_padded(rows, "cpu")
    laws = [exact_law(target, 2, config, prompt=torch.tensor([r])) for r in rows]
    drafter = drafters.DraftModel(draft, 2)

    def run(rng):
        out = specdec.generate(target, ids, drafter, attention_mask=mask, max_new_tokens=2, do_sample=True, top_k=3,
                               eos_token_id=[], pad_token_id=0, randomness=rng)
        return tuple(out.sequences[0, -2:].tolist()), tuple(out.sequences[1, -2:].tolist())

    law = enumerate_law(run)
    assert abs(sum(law.values()) - 1) < 1e-9
    for (a, b), prob in law.items():
        assert abs(prob - laws[0][a] * laws[1][b]) < 1e-9


@pytest.mark.slow
def test_chi_square_in_a_batch():
    """Eight identical rows with different acceptance: pooled samples pass chi-square; the draft's fail."""
    target, draft = small_models()
    law = exact_law(target, 3, specdec.SamplingConfig(do_sample=True))
    prompt = torch.tensor([[1, 4, 2]] * 8)
    samples, drafts = [], []
    for seed in range(250):
        out = specdec.generate(target, prompt, drafters.DraftModel(draft, 3), max_new_tokens=3, do_sample=True,
                               seed=seed, eos_token_id=[], pad_token_id=0)
        samples += [tuple(row[-3:].tolist()) for row in out.sequences]
        own = specdec.generate(draft, prompt, max_new_tokens=3, do_sample=True, seed=seed, eos_token_id=[], pad_token_id=0)
        drafts += [tuple(row[-3:].tolist()) for row in own.sequences]
    assert chi_square_pvalue(samples, law) > 1e-3
    assert chi_square_pvalue(drafts, law) < 1e-6


@pytest.mark.parametrize("drafter_of", [
    lambda t: drafters.DraftModel(t, 4),
    lambda t: drafters.RecursiveTree(t, (2, 2, 2, 2)),
])
def test_self_drafting_batch_accepts_everything(target, drafter_of):
    """With the target as its own draft, every row accepts every draft: the draft caches stay aligned."""
    rows = prompts(6, seed=5)
    ids, mask, expected = expected_batch(target, rows, 26, None, PAD)
    out = specdec.generate(target, ids, drafter_of(target), attention_mask=mask, max_new_tokens=26,
                           eos_token_id=[], pad_token_id=PAD)
    assert torch.equal(out.sequences, expected)
    assert out.stats.steps == 6  # 5 steps of 4 drafts + 1 bonus, then one step for the last token
    assert dict(out.stats.accepted_histogram) == {4: 5 * 6, 0: 6}
