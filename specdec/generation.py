"""``specdec.generate``: one call, one batch, decoded through the one decode loop (:mod:`specdec.engine`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DecodeConfig, resolve
from .drafters.base import Drafter
from .engine import claimed, decode, new_job
from .inputs import assemble, check_inputs
from .sampling import Randomness
from .schedule import FixedBatches
from .stats import DecodeStats
from .streaming import BatchStream
from .target.verifier import Target


@dataclass
class GenerateOutput:
    sequences: torch.Tensor  # [B, T + generated], like model.generate
    stats: DecodeStats


def generate(
    target,
    input_ids: torch.Tensor,
    drafter: Drafter | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    config: DecodeConfig | None = None,
    streamer=None,
    randomness: Randomness | None = None,
    **settings,
) -> GenerateOutput:
    """Decode ``max_new_tokens`` tokens at most from ``target`` with speculative decoding.

    ``target`` is a Hugging Face causal LM; ``drafter=None`` decodes plainly through the same
    loop.  Decoding settings come from ``config`` (a :class:`~specdec.config.DecodeConfig`) and
    keyword arguments naming its fields (``max_new_tokens``, ``do_sample``, ``temperature``,
    ``top_k``, ``top_p``, ``eos_token_id``, ``pad_token_id``, ``seed``, ``speculation``,
    ``typical_acceptance``), which win.  ``speculation`` is the length policy: None (the
    drafter's goodput policy, :meth:`~specdec.drafters.Drafter.default_policy`), an int (a fixed
    depth; 0 is plain decoding), or a :class:`~specdec.policy.speculation.SpeculationPolicy`.
    ``typical_acceptance=(epsilon, delta)`` replaces lossless sampling by Medusa's typical
    acceptance: LOSSY, the output is no longer distributed as the target's.

    ``streamer`` (Hugging Face's ``put``/``end`` protocol) receives the tokens as each step
    commits them.  ``randomness`` replaces the seeded random source (every coin and draw goes
    through it; tests pass one that enumerates outcomes exactly).

    A batch is decoded together (EQSPEC): after each step rows that accepted different
    numbers of tokens are realigned, and finished rows leave the batch.
    """
    model = target.model if isinstance(target, Target) else target
    settings = resolve(config, settings)
    check_inputs(model, input_ids, attention_mask, settings.max_new_tokens, drafter, settings.pad_token_id,
                 settings.eos_token_id)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    job = new_job(model, drafter, settings, randomness, input_ids.device)
    started = job.clock()
    with torch.no_grad(), claimed(drafter):
        if streamer is not None:
            job.stream = BatchStream(streamer, input_ids, job.pad)
        rows = list(range(input_ids.shape[0]))
        decode(job, FixedBatches([(rows, input_ids, attention_mask)]))
        if job.stream is not None:
            job.stream.end()
    job.finish(started)
    generated = [job.generated[i] for i in rows]
    return GenerateOutput(assemble(input_ids, generated, job.pad), job.stats)
