"""Timing one model's decoding step: what a draft's cost relative to its target is measured with."""
from __future__ import annotations

import statistics

import torch

from .clock import clock_for


@torch.inference_mode()
def step_seconds(model, prompt: torch.Tensor, steps: int) -> float:
    """Median seconds of a one-token forward with a cache of the prompt plus the tokens so far."""
    out = model(prompt, use_cache=True)
    cache, token, times, clock = out.past_key_values, out.logits[:, -1:].argmax(-1), [], clock_for(model)
    for _ in range(steps + 3):
        started = clock()
        out = model(token, past_key_values=cache, use_cache=True)
        times.append(clock() - started)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return statistics.median(times[3:])
