"""generate_pool: EXSPEC's sliding pool and fixed EQSPEC batches give every prompt its own generate's output."""
import pytest
import torch

import specdec
from exact_randomness import enumerate_law
from specdec import drafters
from specdec.schedule import plan_group
from test_batch import PAD, VOCAB, make, row_reference, target  # noqa: F401  (fixture)
from test_sampling_lossless import exact_law
from test_sampling_lossless import models as small_models


def pool_prompts(count: int, seed: int) -> list[list[int]]:
    """Prompts of very different lengths, several sharing a length (so equal-length groups exist)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [1, 7, 7, 7, 30, 12, 7, 2, 12, 12, 40, 7, 3, 12, 19, 7]
    return [torch.randint(3, VOCAB, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(count)]


@pytest.mark.parametrize("policy", ["exspec", "eqspec"])
@pytest.mark.parametrize("batch_size", [2, 3, 8])
@pytest.mark.parametrize("kind", ["none", "noisy", "lookup", "tree"])
def test_every_prompt_matches_its_own_generate(target, policy, batch_size, kind):
    prompts = pool_prompts(13, seed=batch_size)
    out = specdec.generate_pool(target, prompts, make(kind, target), batch_size=batch_size, schedule=policy,
                                max_new_tokens=18, eos_token_id=[])
    assert len(out.sequences) == len(prompts)
    for prompt, seq in zip(prompts, out.sequences):
        assert seq.tolist() == prompt + row_reference(target, prompt, 18, None)
    assert out.stats.row_tokens == [18] * len(prompts)


@pytest.mark.parametrize("policy", ["exspec", "eqspec"])
def test_rows_ending_at_eos(target, policy):
    """Rows that hit EOS leave the pool (and new prompts enter) exactly where generate stops them."""
    prompts = pool_prompts(11, seed=4)
    free = [row_reference(target, p, 20, None) for p in prompts]
    eos = free[3][5]
    out = specdec.generate_pool(target, prompts, make("noisy", target), batch_size=4, schedule=policy,
                                max_new_tokens=20, eos_token_id=eos)
    lengths = []
    for prompt, seq in zip(prompts, out.sequences):
        expected = row_reference(target, prompt, 20, eos)
        lengths.append(len(expected))
        assert seq.tolist() == prompt + expected
    assert min(lengths) < 20
    assert out.stats.row_tokens == lengths


def test_equal_lengths_need_no_realignment(target):
    """Same-length prompts with a draft that is always right: EXSPEC never pads or realigns."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, VOCAB, (9,), generator=g).tolist() for _ in range(8)]
    out = specdec.generate_pool(target, prompts, drafters.DraftModel(target, 3), batch_size=4, window=8,
                                max_new_tokens=16, eos_token_id=[])
    for prompt, seq in zip(prompts, out.sequences):
        assert seq.tolist() == prompt + row_reference(target, prompt, 16, None)
    assert out.stats.realignments == 0 and out.stats.aligned_fraction == 1.0
    assert out.stats.realign_seconds == 0.0


def test_exspec_realigns_less_than_eqspec(target):
    """With a noisy draft rows diverge; EXSPEC regroups them and needs realignment on fewer steps."""
    prompts = pool_prompts(16, seed=9)
    kwargs = dict(batch_size=4, max_new_tokens=24, eos_token_id=[])
    ex = specdec.generate_pool(target, prompts, make("noisy", target), schedule="exspec", **kwargs)
    eq = specdec.generate_pool(target, prompts, make("noisy", target), schedule="eqspec", **kwargs)
    assert [s.tolist() for s in ex.sequences] == [s.tolist() for s in eq.sequences]
    assert eq.stats.aligned_fraction < ex.stats.aligned_fraction
    assert ex.stats.regroup_seconds > 0


def test_exact_law_through_the_pool():
    """Three sampled prompts in a pool of two rows: the joint law is exactly the product of the target's laws."""
    model, draft = small_models()
    config = specdec.SamplingConfig(do_sample=True, top_k=2)
    prompts = [[1, 4, 2], [3, 1, 2], [5, 2]]
    laws = [exact_law(model, 2, config, prompt=torch.tensor([p])) for p in prompts]

    def run(rng):
        out = specdec.generate_pool(model, prompts, drafters.DraftModel(draft, 2), batch_size=2, window=2,
                                    max_new_tokens=2, do_sample=True, top_k=2, eos_token_id=[], randomness=rng)
        return tuple(tuple(s[-2:].tolist()) for s in out.sequences)

    law = enumerate_law(run)
    assert abs(sum(law.values()) - 1) < 1e-9
    for (a, b, c), prob in law.items():
        assert abs(prob - laws[0][a] * laws[1][b] * laws[2][c]) < 1e-9


def test_plan_group():
    # the largest equal-length group, capped at the batch size
    assert plan_group([5, 7, 7, 5, 7], 4, 2) == ([1, 2, 4], True)
    assert plan_group([5, 7, 7, 5, 7], 2, 1) == ([0, 3], True)  # both fill the batch: the shorter
    # ties go to the shorter length
    assert plan_group([9, 9, 4, 4], 2, 2) == ([2, 3], True)
    # no group of min_group_size: the batch_size rows closest in length, padded
    assert plan_group([3, 40, 10, 12, 11, 90], 3, 2) == ([2, 3, 4], False)
    # a pool smaller than min_group_size of one length runs as it is
    assert plan_group([6], 8, 4) == ([0], True)


@pytest.mark.parametrize("kwargs,message", [
    (dict(schedule="fifo"), "unknown schedule"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=4, window=2), "window"),
    (dict(batch_size=4, min_group_size=5), "min_group_size"),
])
def test_bad_arguments(target, kwargs, message):
    with pytest.raises(ValueError, match=message):
        specdec.generate_pool(target, [[1, 2, 3]], **kwargs)


def test_bad_prompts(target):
    with pytest.raises(ValueError, match="non-empty list"):
        specdec.generate_pool(target, [])
    with pytest.raises(ValueError, match="prompt 1"):
        specdec.generate_pool(target, [[1, 2], []])
    with pytest.raises(ValueError, match="vocabulary"):
        specdec.generate_pool(target, [[1, 2], [VOCAB + 5]])
