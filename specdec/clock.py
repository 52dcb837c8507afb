"""The one clock every time the engine, the profiler and the policies read comes from.

Work on an accelerator is queued: a kernel launch returns at once and the device runs it later, so
``time.perf_counter()`` around a CUDA forward measures the launch, not the work.  A :class:`Clock`
bound to a device synchronises that device before each reading when it is not the CPU, so a step's
draft and verify seconds, and a latency profile's points, are the time the work took.  On the CPU
nothing is queued and it never synchronises.

``synchronize`` may be injected (tests count its calls); by default it is
``torch.cuda.synchronize``/``torch.mps.synchronize``/``torch.xpu.synchronize`` for the device type,
looked up when first needed, so nothing here depends on an accelerator being present.
"""
from __future__ import annotations

import time
from typing import Callable

import torch


def device_synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished its queued work (no-op for the CPU and unknown types)."""
    backend = getattr(torch, device.type, None)
    sync = getattr(backend, "synchronize", None)
    if device.type != "cpu" and callable(sync):
        sync(device) if device.type == "cuda" else sync()


class Clock:
    """Seconds from ``time.perf_counter``, read after the device has finished its queued work."""

    def __init__(self, device: torch.device | str | None = None,
                 synchronize: Callable[[torch.device], None] | None = None):
        self.device = torch.device(device if device is not None else "cpu")
        self.synchronizes = self.device.type != "cpu"
        self._synchronize = synchronize or device_synchronize

    def __call__(self) -> float:
        if self.synchronizes:
            self._synchronize(self.device)
        return time.perf_counter()

    def __repr__(self) -> str:
        return f"Clock({self.device})"


def clock_for(tensor_or_device) -> Clock:
    """A :class:`Clock` for the device a tensor lives on (or a device, or a module's first parameter)."""
    if isinstance(tensor_or_device, torch.nn.Module):
        tensor_or_device = next(tensor_or_device.parameters())
    device = tensor_or_device.device if isinstance(tensor_or_device, torch.Tensor) else tensor_or_device
    return Clock(device)
