"""Many prompts through the one decode loop: fixed batches (EQSPEC) or a sliding pool (EXSPEC).

``schedule="eqspec"`` decodes the prompts in fixed batches of ``batch_size``, in input order;
``schedule="exspec"`` keeps a pool of up to ``window`` sequences and steps equal-length groups
(see :mod:`specdec.schedule`).  Results come back in input order, each sequence its prompt
followed by its generated tokens.  A row with a length no other row shares waits until the
fallback picks it, so EXSPEC trades per-sequence latency for throughput.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DecodeConfig, resolve
from .drafters.base import Drafter
from .engine import claimed, decode, new_job
from .inputs import check_inputs, left_padded, prompt_rows
from .sampling import Randomness
from .schedule import EqualLengthPool, FixedBatches
from .stats import DecodeStats
from .target.verifier import Target

SCHEDULES = ("exspec", "eqspec")


@dataclass
class PoolOutput:
    sequences: list[torch.Tensor]  # per prompt, in input order: prompt + generated tokens (1D)
    stats: DecodeStats


def generate_pool(
    target,
    prompts: list,
    drafter: Drafter | None = None,
    batch_size: int = 8,
    schedule: str = "exspec",
    window: int | None = None,
    min_group_size: int | None = None,
    *,
    config: DecodeConfig | None = None,
    randomness: Randomness | None = None,
    **settings,
) -> PoolOutput:
    """Decode every prompt of ``prompts`` (token-id lists or 1D tensors) with ``batch_size`` rows per step.

    ``window`` (default ``2 * batch_size``) bounds the EXSPEC pool; ``min_group_size`` (default
    ``batch_size // 2``) is the smallest equal-length group it runs unpadded.  ``config`` and
    the keyword ``settings`` are ``specdec.generate``'s.  Greedy output equals ``generate``'s
    (and ``model.generate``'s) for each prompt alone; sampled output is distributed like it.
    """
    if "policy" in settings:
        raise TypeError("generate_pool's batching argument is schedule= ('exspec' or 'eqspec'); "
                        "the speculation-length policy is speculation=")
    model = target.model if isinstance(target, Target) else target
    settings = resolve(config, settings)
    rows = prompt_rows(prompts)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    window = 2 * batch_size if window is None else window
    if not isinstance(window, int) or window < batch_size:
        raise ValueError(f"window must be an int >= batch_size ({batch_size}), got {window!r}")
    min_group_size = max(1, batch_size // 2) if min_group_size is None else min_group_size
    if not isinstance(min_group_size, int) or not 1 <= min_group_size <= batch_size:
        raise ValueError(f"min_group_size must be an int in [1, batch_size={batch_size}], got {min_group_size!r}")
    device = next(model.parameters()).device
    for i, row in enumerate(rows):  # the same checks as generate, per prompt
        check_inputs(model, torch.tensor([row], device=device), None, settings.max_new_tokens, drafter,
                     settings.pad_token_id, settings.eos_token_id, name=f"prompt {i}")
    job = new_job(model, drafter, settings, randomness, device)
    started = job.clock()
    with torch.no_grad(), claimed(drafter):
        if schedule == "eqspec":
            batches = (_batch(rows, range(first, min(first + batch_size, len(rows))), device)
                       for first in range(0, len(rows), batch_size))
            decode(job, FixedBatches(batches))
        else:
            decode(job, EqualLengthPool(rows, batch_size, window, min_group_size, device))
    job.finish(started)
    sequences = [torch.tensor(job.committed[i], dtype=torch.long, device=device) for i in range(len(rows))]
    return PoolOutput(sequences, job.stats)


def _batch(rows: list[list[int]], ids, device):
    ids = list(ids)
    input_ids, mask = left_padded([rows[i] for i in ids], device)
    return ids, input_ids, mask
