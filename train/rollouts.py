"""``python -m specdec.train.rollouts``: the draft's own sampled continuations of corpus v2's prompts.

On-policy data for distillation (DistillSpec, Zhou et al. 2024; HASS): a draft trained only on
text the target wrote never sees the prefixes it writes itself, yet under sampling its own tokens
are the ones verification keeps.  This command samples the current draft (``draft``, an artifact
of ``python -m specdec.train.draft``) on prompt-only records of the corpus, ``offset`` onwards
(past those ``python -m specdec.train.answers`` gave to the target), and writes them in the
answers format, resumable the same way.  ``python -m specdec.train.teacher`` then teacher-forces
the target over them (``answers=`` this file, ``only_self_distilled=true``, its own ``out_dir``),
so every drafted position carries the target's law; ``python -m specdec.train.draft
rollouts_dir=...`` mixes them into training (soft targets only: a draft-written next token is no
label).
"""
from __future__ import annotations

import logging

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from .answers import answer, eos_ids, prompt_records, record_run
from .corpus_build import load_corpus

log = logging.getLogger("specdec.train.rollouts")


def rollout_records(records: list[dict], offset: int, limit: int | None) -> list[dict]:
    """Prompt-only records ``offset`` .. ``offset + limit`` in corpus order (past the target's answered ones)."""
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError(f"offset and limit must be non-negative, got {offset} and {limit}")
    prompts = prompt_records(records)
    if offset >= len(prompts):
        raise ValueError(f"offset {offset} skips all {len(prompts)} prompt-only records")
    return prompts[offset:] if limit is None else prompts[offset: offset + limit]


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/rollouts")
def main(cfg: DictConfig) -> None:
    from specdec import drafters

    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    records = rollout_records(load_corpus(cfg.corpus), int(cfg.offset), None if cfg.limit is None else int(cfg.limit))
    model, tokenizer = instantiate(cfg.target.load)
    draft = drafters.load_draft_model(model, hydra.utils.to_absolute_path(cfg.draft))
    stats = answer(draft, tokenizer, records, cfg.out, int(cfg.max_new_tokens), int(cfg.batch_size),
                   int(cfg.chunk_size), int(cfg.sort_window), bool(cfg.progress),
                   temperature=float(cfg.temperature), seed=int(cfg.seed), eos=eos_ids(model))
    log.info("%d prompts rolled out by %s (%d were done), %d new tokens in %.0f s -> %s", stats["answered"], cfg.draft,
             stats["already_done"], stats["new_tokens"], stats["seconds"], cfg.out)
    record_run(cfg, stats, "rollouts.json", ("rollouts", "tokens"), {"draft": str(cfg.draft)})


if __name__ == "__main__":
    main()
