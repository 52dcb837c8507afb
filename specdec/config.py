"""One settings object for a decoding job, in the spirit of Hugging Face's ``GenerationConfig``.

``specdec.generate`` and ``specdec.generate_pool`` take a :class:`DecodeConfig` (``config=``),
keyword arguments naming its fields, or both (keywords win)::

    settings = specdec.DecodeConfig(max_new_tokens=128, do_sample=True, temperature=0.7, seed=0)
    specdec.generate(model, ids, drafter, config=settings)
    specdec.generate(model, ids, drafter, config=settings, temperature=1.0)   # one field changed
"""
from __future__ import annotations

import dataclasses
import numbers
import warnings
from dataclasses import dataclass

from .sampling import SamplingConfig


@dataclass(frozen=True)
class DecodeConfig:
    max_new_tokens: int = 64
    do_sample: bool = False  # False: exact greedy decoding
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    eos_token_id: int | list[int] | None = None  # None: the model's generation config; [] never stops early
    pad_token_id: int | None = None  # None: the model's, else the first EOS id
    seed: int | None = None  # of the random source (sampling); None seeds from torch's global RNG
    speculation: object = None  # None (the drafter's num_tokens), an int, or a SpeculationPolicy
    typical_acceptance: tuple[float, float] | None = None  # (epsilon, delta): Medusa's LOSSY rule, opt-in

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)):
            raise TypeError(f"seed must be an int or None, got {type(self.seed).__name__} {self.seed!r}")
        self.sampling  # validates temperature, top_k and top_p
        if self.typical_acceptance is not None:
            object.__setattr__(self, "typical_acceptance", _typical(self.typical_acceptance))
        if not self.do_sample:
            ignored = [name for name, value, default in (("temperature", self.temperature, 1.0), ("top_k", self.top_k, 0),
                                                         ("top_p", self.top_p, 1.0),
                                                         ("typical_acceptance", self.typical_acceptance, None))
                       if value != default]
            if ignored:
                warnings.warn(f"{', '.join(ignored)} only apply when sampling; with do_sample=False decoding is "
                              "exact greedy and ignores them", UserWarning, stacklevel=3)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(bool(self.do_sample), float(self.temperature), int(self.top_k), float(self.top_p))

    def with_overrides(self, **overrides) -> "DecodeConfig":
        """A copy with the named fields replaced; an unknown name is a TypeError listing the known ones."""
        if not overrides:
            return self
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown decoding argument(s) {unknown}; DecodeConfig has {sorted(known)}")
        return dataclasses.replace(self, **overrides)


def resolve(config: DecodeConfig | None, overrides: dict) -> DecodeConfig:
    """``config`` (default settings when None) with keyword ``overrides`` applied."""
    if config is not None and not isinstance(config, DecodeConfig):
        raise TypeError(f"config must be a specdec.DecodeConfig, got {type(config).__name__}")
    return (config or DecodeConfig()).with_overrides(**overrides)


def _typical(value) -> tuple[float, float]:
    try:
        epsilon, delta = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"typical_acceptance must be None or (epsilon, delta), got {value!r}") from None
    if not (0 <= epsilon <= 1 and delta >= 0):
        raise ValueError(f"typical_acceptance needs 0 <= epsilon <= 1 and delta >= 0, got {value!r}")
    return epsilon, delta
