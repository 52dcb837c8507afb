"""Logits processing and token sampling, shared by the target and every drafter.

One function turns raw logits into the law tokens are drawn from (temperature, top-k,
top-p, applied in that order, the order Hugging Face uses); the acceptance rules see
only laws produced by it, so draft and target are always processed identically.
Greedy decoding is an exact ``argmax`` of the raw logits, never a tiny temperature.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are chosen: ``do_sample=False`` is exact greedy decoding."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def law_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """The dtype laws are computed in: float64 for float64 logits, else float32."""
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


def processed_probs(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """The law a sampler draws from: softmax of temperature/top-k/top-p processed logits.

    Works on any leading shape; the last dimension is the vocabulary. Computed in float64
    when the logits are float64, else float32.
    """
    scores = logits.to(law_dtype(logits.dtype)) / config.temperature
    if config.top_k and config.top_k < scores.shape[-1]:
        kth = torch.topk(scores, config.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        # Drop the low tail whose mass is at most 1 - top_p; always keep the top token.
        drop_sorted = cumulative <= (1.0 - config.top_p)
        drop_sorted[..., -1] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(dim=-1)


class Randomness:
    """Every random decision of decoding goes through one of these methods.

    Rules state their coin flips' probabilities explicitly, so a test can replace this object
    with one that enumerates every outcome and its exact probability.
    """

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def coins(self, prob: torch.Tensor) -> torch.Tensor:
        """Independent Bernoulli draws: True with probability ``prob``, elementwise."""
        u = torch.rand(prob.shape, generator=self.generator, dtype=prob.dtype, device=prob.device)
        return u < prob

    def categorical(self, probs: torch.Tensor) -> torch.Tensor:
        """One draw per row from ``probs`` [..., V]; returns indices of shape [...].

        An inverse-CDF draw from one uniform per row (:func:`inverse_cdf_draw`): over Gemma 3's 262k
        tokens ``torch.multinomial`` takes 7-9 ms a row on the development CPU, this under 1 ms.
        """
        flat = probs.reshape(-1, probs.shape[-1])
        uniforms = torch.rand(flat.shape[0], generator=self.generator, dtype=torch.float64, device=probs.device)
        drawn = inverse_cdf_draw(flat, uniforms)
        bad = flat.gather(1, drawn[:, None])[:, 0] <= 0
        if bool(bad.any()):  # float rounding at a block's edge landed on a token without mass: draw that row again
            drawn[bad] = torch.multinomial(flat[bad], 1, generator=self.generator).squeeze(-1)
        return drawn.reshape(probs.shape[:-1])

    def without_replacement(self, probs: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` distinct draws per row of ``probs`` [R, V], in draw order, by Gumbel-Top-k.

        The order of log p + Gumbel noise is the order of sequential sampling without
        replacement (Kool et al., 2019).  Rows with fewer than ``count`` possible tokens get -1
        in the places past their support.  ``count == 1`` is one ordinary categorical draw.
        """
        if count == 1:
            return self.categorical(probs)[:, None]
        keys = torch.log(probs) + self.gumbel(probs.shape, probs.dtype, probs.device)
        top = torch.topk(keys, count, dim=-1)
        return torch.where(torch.isfinite(top.values), top.indices, torch.full_like(top.indices, -1))

    def gumbel(self, shape, dtype: torch.dtype, device) -> torch.Tensor:
        """Independent standard Gumbel noise."""
        u = torch.rand(shape, generator=self.generator, dtype=dtype, device=device)
        return -torch.log(-torch.log(u.clamp_min(torch.finfo(dtype).tiny)))


def inverse_cdf_draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative-mass interval holds ``uniforms`` [R] (in [0, 1)) x each row's mass.

    ``probs`` [R, V] need not be normalised.  Two levels, so no full-length cumulative sum is built
    (one over 262k entries costs milliseconds): the sums of blocks of about sqrt(V) tokens pick a
    block, the cumulative sum inside it the token.  Tokens without mass own empty intervals and are
    never returned, up to float rounding at a block's edge (the caller checks).
    """
    rows, vocab = probs.shape
    block = 1 << max(0, vocab.bit_length() // 2)
    blocks = torch.nn.functional.pad(probs, (0, (-vocab) % block)).view(rows, -1, block)
    block_cdf = blocks.sum(dim=-1, dtype=torch.float64).cumsum(dim=-1)  # [R, nb]
    target = uniforms.to(torch.float64)[:, None] * block_cdf[:, -1:]
    chosen = torch.searchsorted(block_cdf, target, right=True).clamp_max(block_cdf.shape[1] - 1)  # [R, 1]
    before = torch.where(chosen > 0, block_cdf.gather(1, (chosen - 1).clamp_min(0)), torch.zeros_like(target))
    inner_cdf = blocks.gather(1, chosen[..., None].expand(rows, 1, block))[:, 0].to(torch.float64).cumsum(dim=-1)
    inside = torch.searchsorted(inner_cdf, target - before, right=True).clamp_max(block - 1)
    return (chosen * block + inside).squeeze(-1).clamp_max(vocab - 1)


def seeded_randomness(seed: int | None, device="cpu") -> Randomness:
    """A :class:`Randomness` on its own generator; ``seed=None`` seeds from torch's global RNG."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, (1,))))
    return Randomness(generator)


def choose(logits: torch.Tensor, config: SamplingConfig, rng: Randomness):
    """Next tokens from raw logits [..., V]: argmax when greedy, else a draw.

    Returns ``(tokens, probs)``; ``probs`` is the processed law (``None`` when greedy).
    """
    if not config.do_sample:
        return logits.argmax(dim=-1), None
    probs = processed_probs(logits, config)
    return rng.categorical(probs), probs
