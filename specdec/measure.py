"""Timing one model's decoding step: what a draft's cost relative to its target is measured with."""
from __future__ import annotations

import statistics
import time

import torch


@torch.inference_mode()
def step_seconds(model, prompt: torch.Tensor, steps: int) -> float:
    """Median seconds of a one-token forward with a cache of the prompt plus the tokens so far."""
    out = model(prompt, use_cache=True)
    cache, token, times = out.past_key_values, out.logits[:, -1:].argmax(-1), []
    for _ in range(steps + 3):
        started = time.perf_counter()
        out = model(token, past_key_values=cache, use_cache=True)
        times.append(time.perf_counter() - started)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return statistics.median(times[3:])
