"""Which matrix-product paths a target's forward takes on this machine: settings measured by the profile.

A decoding step multiplies one to a few dozen rows (tokens over the batch) by every weight
matrix.  On CPUs the same product runs at very different speeds by the way it is written and by
how many rows it has, and where those speeds cross depends on the CPU, its caches, the thread
count and the model's shapes:

* ``linear_rows``: up to this many rows the decoder's linear layers multiply as ``W @ x.T``
  (:func:`specdec.target.head.linear`), beyond it as ``F.linear``;
* ``head_rows``: the same cut-over for the output head, a much larger matrix;
* ``padded_rows``: row counts multiplied as a few more rows (copies of the first), because the
  larger product is faster (a single column takes a matrix-vector path);
* ``cheap_head_rows``: rows the output head multiplies for about the cost of one, so greedy
  acceptance projects the root and the first nodes in one call;
* ``fuse``: whether the lean Llama forward multiplies q/k/v and gate/up as one product each
  (from concatenated copies of the weights).

``python -m specdec.policy.profile`` and SmartSpec's first-use profile measure them
(:func:`specdec.policy.kernel_profile.measure_kernels`) and store them with the latency model; a
:class:`~specdec.target.verifier.Target` reads them from there (:func:`kernels_for`).  Where no profile
exists, :data:`FALLBACK` holds the values measured on the 2-core development CPU with
SmolLM2-135M in float32, which is all they are good for.  Any setting gives the same numbers up to
float rounding.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FUSE_BYTES = 1 << 30  # never fuse when the fused copy of q/k/v and gate/up would pass this (memory, not speed)


@dataclass(frozen=True)
class Kernels:
    linear_rows: int = 8
    head_rows: int = 32
    padded_rows: dict = field(default_factory=lambda: {1: 2, 3: 4})
    cheap_head_rows: int = 4
    fuse: bool = True
    measured: bool = False  # False: the fallback constants, not measured on this machine

    def __post_init__(self):
        padded = {int(k): int(v) for k, v in dict(self.padded_rows).items()}
        if any(v <= k for k, v in padded.items()):
            raise ValueError(f"padded_rows must map a row count to a larger one, got {padded}")
        object.__setattr__(self, "padded_rows", padded)
        for name in ("linear_rows", "head_rows", "cheap_head_rows"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_json(self) -> dict:
        out = asdict(self)
        out["padded_rows"] = {str(k): v for k, v in self.padded_rows.items()}
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Kernels":
        return cls(**{**data, "padded_rows": {int(k): int(v) for k, v in data.get("padded_rows", {}).items()}})


FALLBACK = Kernels()

_loaded: dict[Path, tuple[float, Kernels]] = {}  # profile path -> (modification time, its kernels)
_measured: dict[Path, Kernels] = {}  # measured in this process, before (or without) a profile file


def remember(model, kernels: Kernels) -> None:
    """Use ``kernels`` for ``model`` (this dtype, device, thread count) in this process from now on."""
    from ..policy.latency import default_path, latency_key

    _measured[default_path(latency_key(model))] = kernels


def kernels_for(model) -> Kernels:
    """The kernels measured for this model, dtype, device and thread count: in this process, else stored
    with its latency profile, else :data:`FALLBACK`.  Files are read once and again only when they change."""
    from ..policy.latency import default_path, latency_key

    path = default_path(latency_key(model))
    if path in _measured:
        return _measured[path]
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return FALLBACK
    cached = _loaded.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        stored = json.loads(path.read_text(encoding="utf-8")).get("kernels")
        kernels = Kernels.from_json(stored) if stored else FALLBACK
    except (OSError, ValueError, TypeError):
        kernels = FALLBACK  # a half-written or foreign file: SmartSpec's loader reports it
    _loaded[path] = (stamp, kernels)
    return kernels
