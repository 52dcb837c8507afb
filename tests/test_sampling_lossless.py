"""Sampled speculative decoding is distributed exactly as the target's own sampler.

Exact: every random choice of ``specdec.generate`` (draft draws, coins, residual and bonus
draws) is enumerated with its probability on a six-token vocabulary and the law of the
generated tokens is compared with the target's law computed by enumeration.  Sampled: a
chi-square test of many seeded runs against that law, with the draft's own law as a negative
control that the same test must reject.
"""
import itertools

import pytest
import torch

import specdec
from conftest import tiny_llama
from exact_randomness import enumerate_law
from specdec import drafters
from specdec.sampling import SamplingConfig, processed_probs

VOCAB = 6
PROMPT = torch.tensor([[1, 4, 2]])


def models(vocab: int = VOCAB):
    target = tiny_llama(vocab, seed=21, eos_token_id=None, hidden=16, heads=2, kv_heads=1)
    draft = tiny_llama(vocab, seed=22, eos_token_id=None, hidden=16, heads=2, kv_heads=1, num_layers=1)
    with torch.no_grad():  # sharpen both so their laws differ visibly, as real ones do
        target.lm_head.weight.mul_(8)
        draft.lm_head.weight.mul_(8)
    return target, draft


def exact_law(model, length: int, config: SamplingConfig, prompt: torch.Tensor = PROMPT) -> dict:
    """Law of ``length`` sampled tokens after ``prompt`` [1, T], by enumerating every sequence."""
    law = {}
    for seq in itertools.product(range(model.config.vocab_size), repeat=length):
        tokens = prompt[0].tolist() + list(seq)
        with torch.no_grad():
            logits = model(torch.tensor([tokens])).logits[0, prompt.shape[1] - 1: -1]
        probs = processed_probs(logits, config)
        law[seq] = float(torch.prod(probs[torch.arange(length), torch.tensor(seq)]))
    return law


def generated(out) -> tuple:
    return tuple(out.sequences[0, PROMPT.shape[1]:].tolist())


@pytest.mark.parametrize("config,k,length", [
    (SamplingConfig(do_sample=True), 2, 2),
    (SamplingConfig(do_sample=True, temperature=0.7, top_k=3, top_p=0.9), 2, 3),
])
def test_exact_law_through_generate(config, k, length):
    """Enumerating every random choice of generate gives exactly the target's law."""
    target, draft = models()
    expected = exact_law(target, length, config)
    kwargs = dict(max_new_tokens=length, do_sample=True, temperature=config.temperature, top_k=config.top_k,
                  top_p=config.top_p, eos_token_id=[])
    for drafter in (drafters.DraftModel(draft, num_tokens=k), drafters.PromptLookup(num_tokens=k, max_ngram=2)):
        law = enumerate_law(lambda rng: generated(specdec.generate(target, PROMPT, drafter, randomness=rng, **kwargs)))
        assert abs(sum(law.values()) - 1) < 1e-9
        for seq, prob in expected.items():
            assert abs(law.get(seq, 0.0) - prob) < 1e-9, (type(drafter).__name__, seq, law.get(seq), prob)


def chi_square_pvalue(samples: list[tuple], law: dict) -> float:
    """Pearson's chi-square test of ``samples`` against ``law``; cells expecting < 5 are pooled."""
    from scipy.stats import chisquare

    n = len(samples)
    counts = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    observed, expected, pooled_obs, pooled_exp = [], [], 0, 0.0
    for seq, prob in law.items():
        if prob * n >= 5:
            observed.append(counts.get(seq, 0))
            expected.append(prob * n)
        else:
            pooled_obs += counts.get(seq, 0)
            pooled_exp += prob * n
    observed.append(pooled_obs + sum(c for s, c in counts.items() if s not in law))
    expected.append(pooled_exp)
    return float(chisquare(observed, expected).pvalue)


@pytest.mark.slow
def test_chi_square_matches_target_and_rejects_the_draft():
    """3 sampled tokens pass a chi-square test against the target's law; the draft's law fails it."""
    target, draft = models()
    config = SamplingConfig(do_sample=True)
    law = exact_law(target, 3, config)
    runs = 2000
    drafter = drafters.DraftModel(draft, num_tokens=3)
    speculative = [
        generated(specdec.generate(target, PROMPT, drafter, max_new_tokens=3, do_sample=True, seed=s, eos_token_id=[]))
        for s in range(runs)
    ]
    assert chi_square_pvalue(speculative, law) > 1e-3
    # negative control: as many samples of the draft's own law, tested against the target's law, must fail
    assert chi_square_pvalue(samples_of(exact_law(draft, 3, config), runs), law) < 1e-6


def samples_of(law: dict, n: int, seed: int = 0) -> list[tuple]:
    """``n`` independent draws from an exact law (the negative controls' wrong distribution)."""
    outcomes = list(law)
    weights = torch.tensor([law[o] for o in outcomes], dtype=torch.float64)
    picks = torch.multinomial(weights, n, replacement=True, generator=torch.Generator().manual_seed(seed))
    return [outcomes[i] for i in picks.tolist()]


def test_sampling_is_reproducible_with_a_seed():
    """The same seed gives the same tokens; the drafter does not change the law, only speed."""
    target, draft = models()
    kwargs = dict(max_new_tokens=8, do_sample=True, eos_token_id=[], seed=123)
    a = specdec.generate(target, PROMPT, drafters.DraftModel(draft, 3), **kwargs).sequences
    b = specdec.generate(target, PROMPT, drafters.DraftModel(draft, 3), **kwargs).sequences
    assert torch.equal(a, b)


def test_processed_probs_match_transformers_warpers():
    """Temperature, top-k and top-p are applied exactly as Hugging Face's logits processors do."""
    from transformers.generation.logits_process import (
        LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g, dtype=torch.float64) * 3
    for t, k, p in [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.5, 10, 0.6)]:
        warpers = LogitsProcessorList([TemperatureLogitsWarper(t)]
                                      + ([TopKLogitsWarper(k)] if k else [])
                                      + ([TopPLogitsWarper(p)] if p < 1 else []))
        expected = warpers(None, logits.clone()).softmax(-1)
        actual = processed_probs(logits, SamplingConfig(True, t, k, p))
        assert torch.allclose(actual, expected, atol=1e-12)


def test_inverse_cdf_draw_returns_the_token_whose_interval_holds_the_uniform():
    """Against a brute-force cumulative sum over the whole row, for vocabularies that do and do not
    fill the blocks; tokens without mass (including the last ones) are never returned."""
    from specdec.sampling import inverse_cdf_draw

    g = torch.Generator().manual_seed(3)
    for vocab in (1, 6, 37, 1000):
        probs = torch.rand(5, vocab, generator=g, dtype=torch.float64) * (torch.rand(5, vocab, generator=g) < 0.6)
        probs[:, min(1, vocab - 1)] += 0.01  # every row has some mass
        if vocab > 1:
            probs[:, -1] = 0.0
            probs[4, 0] = 0.0  # the last row draws u = 0: the first token with mass, not token 0
        uniforms = torch.cat([torch.rand(5, generator=g, dtype=torch.float64)[:4], torch.tensor([0.0], dtype=torch.float64)])
        cdf = probs.cumsum(-1)
        expected = (cdf <= (uniforms * cdf[:, -1])[:, None]).sum(-1)  # first index whose cumulative mass passes u
        drawn = inverse_cdf_draw(probs, uniforms)
        assert torch.equal(drawn, expected)
        assert bool((probs.gather(1, drawn[:, None]) > 0).all())


def test_categorical_draws_follow_the_law_and_a_wrong_law_fails():
    """Chi-square of seeded draws over 600 tokens against the law drawn from; the same test must reject
    draws from a law with one token's mass moved (negative control)."""
    from specdec.sampling import seeded_randomness

    law = torch.randn(600, generator=torch.Generator().manual_seed(1), dtype=torch.float64).mul(2).softmax(-1)
    law[::7] = 0.0
    law = law / law.sum()
    n = 20000
    drawn = seeded_randomness(0).categorical(law[None].expand(n, -1).to(torch.float32))
    assert not bool((law[drawn] == 0).any())  # tokens without mass are never drawn
    as_dict = {token: float(p) for token, p in enumerate(law)}
    assert chi_square_pvalue(drawn.tolist(), as_dict) > 1e-3
    wrong = law.clone()
    heaviest = int(law.argmax())
    wrong[heaviest] *= 0.9
    wrong[heaviest + 1] += law[heaviest] * 0.1
    assert chi_square_pvalue(seeded_randomness(0).categorical(wrong[None].expand(n, -1).float()).tolist(), as_dict) < 1e-6
