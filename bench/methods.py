"""Decoding methods behind one small protocol: ``run(model, input_ids) -> (sequences, stats, seconds)``.

Four classes cover every method the benchmark knows: Hugging Face's plain ``generate`` (the
baseline), its assisted generation with a draft model, its prompt lookup, and specdec with any
drafter.  A method is built from a Hydra config (``configs/method/*.yaml`` or
``configs/drafter/*.yaml``) by :func:`instantiate_with_target`: every field left as ``???``
receives the loaded target model, so a config can ask for it wherever a constructor needs it.
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Protocol

import torch
from omegaconf import DictConfig, OmegaConf

import specdec
from specdec import DecodeConfig, DecodeStats
from specdec.drafters import Drafter

from specdec.configs import TARGET_PLACEHOLDER, instantiate_with_target  # noqa: F401 (re-exported)


def hf_kwargs(decoding: DecodeConfig) -> dict:
    """Keyword arguments for ``model.generate`` asking what ``decoding`` asks; sampling flags only when sampling."""
    kwargs = dict(max_new_tokens=decoding.max_new_tokens, do_sample=decoding.do_sample,
                  eos_token_id=decoding.eos_token_id, pad_token_id=decoding.pad_token_id)
    if decoding.do_sample:  # HF's own default top_k is 50: say 0 explicitly, as specdec means it
        kwargs.update(temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p)
    return kwargs


class Method(Protocol):
    """One way of decoding.  ``seconds`` is the wall time of the call (perf_counter)."""

    name: str
    decoding: DecodeConfig  # read at every run, so the warm-up may shorten the budget

    def run(self, model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, DecodeStats | None, float]:
        ...


class HFGenerate:
    """Hugging Face ``model.generate`` with ``extra`` generation arguments (none: the baseline)."""

    def __init__(self, name: str, decoding: DecodeConfig, **extra):
        self.name = name
        self.decoding = decoding
        self.extra = extra

    def run(self, model, input_ids):
        if self.decoding.seed is not None:
            torch.manual_seed(self.decoding.seed)
        with torch.inference_mode():
            start = time.perf_counter()
            sequences = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                       **hf_kwargs(self.decoding), **self.extra)
            seconds = time.perf_counter() - start
        return sequences, None, seconds


class HFPromptLookup(HFGenerate):
    """Hugging Face prompt lookup decoding (``prompt_lookup_num_tokens``)."""

    def __init__(self, name: str, decoding: DecodeConfig, num_tokens: int = 10, max_ngram: int = 3):
        super().__init__(name, decoding, prompt_lookup_num_tokens=int(num_tokens),
                         max_matching_ngram_size=int(max_ngram))


class HFAssisted(HFGenerate):
    """Hugging Face assisted generation with the draft model of a specdec ``DraftModel``.

    The assistant gets its own generation config so that it drafts exactly ``num_tokens``
    tokens every step, as specdec does: a constant schedule and no confidence early stop
    (transformers' defaults are 20 tokens and a 0.4 threshold, tuned on the fly).
    """

    def __init__(self, name: str, decoding: DecodeConfig, assistant: Drafter, num_tokens: int | None = None):
        model = getattr(assistant, "model", None)
        if model is None:
            raise TypeError(f"{name}: the assistant must be a drafter with a .model (DraftModel), "
                            f"got {type(assistant).__name__}")
        k = int(num_tokens if num_tokens is not None else assistant.num_tokens)
        model = copy.copy(model)  # a self-draft shares its target's generation_config object
        model.generation_config = copy.deepcopy(model.generation_config)
        model.generation_config.num_assistant_tokens = k
        model.generation_config.num_assistant_tokens_schedule = "constant"
        model.generation_config.assistant_confidence_threshold = 0.0
        super().__init__(name, decoding, assistant_model=model)
        self.num_tokens = k


class Specdec:
    """``specdec.generate`` with one drafter (None: plain decoding through specdec's loop)."""

    def __init__(self, name: str, decoding: DecodeConfig, drafter: Drafter | None = None, speculation=None,
                 **generate_kwargs):
        self.name = name
        self.decoding = decoding
        self.drafter = drafter
        self.speculation = speculation
        self.generate_kwargs = generate_kwargs  # e.g. typical_acceptance (lossy, opt-in)

    def new_pass(self) -> None:
        """A new pass over the prompts: a drafter's suffix cache forgets the earlier passes, so a prompt never
        copies its own earlier output, while within a pass it may copy from the prompts decoded before it."""
        cache = getattr(self.drafter, "suffix_cache", None)
        if cache is not None:
            cache.clear()

    def run(self, model, input_ids):
        with torch.inference_mode():
            start = time.perf_counter()
            out = specdec.generate(model, input_ids, self.drafter, config=self.decoding,
                                   speculation=self.speculation, **self.generate_kwargs)
            seconds = time.perf_counter() - start
        return out.sequences, out.stats, seconds


def speculation_policy(value):
    """The bench's ``speculation`` setting: null (the goodput policy, specdec's default) or an int (a fixed depth)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    if str(value).lower() in ("smartspec", "goodput"):
        return None
    raise ValueError(f"speculation must be null (the goodput policy) or an int >= 0, got {value!r}")


def build_specdec(name: str, drafter_cfg: DictConfig, target_model, decoding: DecodeConfig,
                  speculation=None) -> Specdec:
    """A specdec method from a ``configs/drafter/`` config (``_target_: null`` is no drafter).

    A ``generate:`` mapping in the config is not part of the drafter: it holds extra keyword
    arguments for ``specdec.generate`` (e.g. ``typical_acceptance``).
    """
    extra = {}
    if "generate" in drafter_cfg:
        resolved = OmegaConf.to_container(drafter_cfg, resolve=True, throw_on_missing=False)
        extra = resolved.pop("generate")
        drafter_cfg = OmegaConf.create(resolved)
    drafter = None
    if drafter_cfg.get("_target_") is not None:
        drafter = instantiate_with_target(drafter_cfg, target_model)
    return Specdec(name, decoding, drafter, speculation=speculation_policy(speculation) if drafter else None, **extra)


def build_method(name: str, method_cfg: DictConfig, target_model, decoding: DecodeConfig) -> Method:
    """A method from a ``configs/method/`` config: its class gets ``name`` and ``decoding``."""
    factory = instantiate_with_target(method_cfg, target_model, _partial_=True)
    return factory(name=name, decoding=decoding)


@contextlib.contextmanager
def count_forwards(model: torch.nn.Module):
    """Count forward calls of ``model`` itself (a self-draft shares its hooks, so check identity)."""
    counter = {"forwards": 0}

    def hook(module, args):
        if module is model:
            counter["forwards"] += 1

    handle = model.register_forward_pre_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()
