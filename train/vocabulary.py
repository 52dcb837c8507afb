"""The target and the reduced draft vocabulary every trainer starts from.

The draft vocabulary is the ``size`` tokens the target itself emits most often at the teacher
shards' train answer positions (``token_counts.npy``; FR-Spec), EOS always included, in ascending
target-id order; ``to_draft`` maps each target id to its row in a draft head (-1 outside).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from specdec.drafters.vocab import coverage, top_tokens

from .packing import draft_index


@dataclass
class Setup:
    model: torch.nn.Module
    tokenizer: object
    teacher: Path
    counts: np.ndarray  # [V] the target's own outputs, counted over the train shards
    token_ids: np.ndarray  # [V'] the draft vocabulary, ascending target ids
    to_draft: np.ndarray  # [V] target id -> draft row, -1 outside

    @property
    def head_rows(self) -> np.ndarray:
        """The target's own output rows for the draft vocabulary [V', H] (float32)."""
        return self.model.get_output_embeddings().weight.detach().float().numpy()[self.token_ids]

    @property
    def embeddings(self) -> np.ndarray:
        return self.model.get_input_embeddings().weight.detach().float().numpy()


def setup(cfg) -> Setup:
    """The target (``cfg.target``), its threads, and the draft vocabulary of ``cfg.vocab_size`` from ``cfg.teacher_dir``."""
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    teacher = Path(cfg.teacher_dir)
    model, tokenizer = instantiate(cfg.target.load)
    eos = model.generation_config.eos_token_id
    counts = np.load(teacher / "token_counts.npy")
    token_ids = draft_vocabulary(counts, int(cfg.vocab_size), [eos] if isinstance(eos, int) else list(eos or []))
    return Setup(model, tokenizer, teacher, counts, token_ids, draft_index(token_ids, len(counts)))


def draft_vocabulary(counts: np.ndarray, size: int, eos: list[int]) -> np.ndarray:
    """The ``size`` tokens the target emits most (EOS always), ascending target ids."""
    return top_tokens(torch.from_numpy(counts), size, always=eos).numpy()


def vocabulary_report(counts: np.ndarray, sizes=(1024, 2048, 4096, 8192, 16384, 32768)) -> dict:
    """Coverage of the target's own outputs (train counts) by the top-V' tokens, for a few V'."""
    t = torch.from_numpy(counts)
    return {str(v): round(coverage(t, v), 4) for v in sizes if v <= len(counts)}


def cost_by_size(run: Setup, draft_config, sizes=(2048, 4096, 8192, 16384, 49152), num_tokens: int = 4) -> dict:
    """A draft of ``draft_config``'s shape (random weights) with each vocabulary size: its cost per drafted token
    against a target step, measured in the engine (:func:`specdec.train.measure.relative_cost`), and its coverage."""
    from dataclasses import replace

    from specdec import drafters
    from specdec.heads.llama_flax import LlamaDraft, export_reduced

    from .measure import relative_cost

    import tempfile

    import jax
    import jax.numpy as jnp

    out = {}
    for size in sizes:
        size = min(size, len(run.counts))
        ids = draft_vocabulary(run.counts, size, [])
        config = replace(draft_config, draft_vocab_size=size)
        params = LlamaDraft(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), None, None,
                                         jnp.zeros((1, 4, config.embed_dim)))["params"]
        with tempfile.TemporaryDirectory() as folder:
            export_reduced(params, config, ids, folder, dtype="float32")
            draft = drafters.load_draft_model(run.model, folder)
        cost = relative_cost(run.model, run.tokenizer, lambda: drafters.DraftModel(draft, num_tokens), repeats=2)
        out[str(size)] = {"coverage": round(coverage(torch.from_numpy(run.counts), size), 4), **cost}
    return out
