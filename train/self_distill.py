"""``python -m specdec.train.self_distill``: the target answers the training prompts (self-distillation).

Heads and drafts learn the target's own outputs (the Medusa recipe), so no outside data is
needed.  Writes ``<work_dir>/tokens.safetensors`` (``ids`` concatenated int32, ``offsets``
[n+1], ``prompt_lengths`` [n]) and ``data.json`` (what made it).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import specdec
from specdec.chat import encode_chat as encode

from .corpus import training_prompts

log = logging.getLogger("specdec.train.self_distill")


def distill(model, tokenizer, count: int, max_new_tokens: int, batch_size: int, do_sample: bool = False,
            temperature: float = 1.0, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Prompt + answer token ids for ``count`` corpus prompts, and each prompt's length."""
    chats = training_prompts(count, seed)
    prompts = [encode(tokenizer, chat)[0].tolist() for chat in chats]
    eos = getattr(model.generation_config, "eos_token_id", None)
    with torch.inference_mode():
        out = specdec.generate_pool(model, prompts, None, batch_size=batch_size, schedule="eqspec",
                                    max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                    eos_token_id=eos, seed=seed)
    return [s.tolist() for s in out.sequences], [len(p) for p in prompts]


def save_tokens(path: Path, sequences: list[list[int]], prompt_lengths: list[int]) -> None:
    from safetensors.numpy import save_file

    offsets = np.cumsum([0] + [len(s) for s in sequences]).astype(np.int64)
    save_file({"ids": np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences]),
               "offsets": offsets, "prompt_lengths": np.asarray(prompt_lengths, dtype=np.int32)}, str(path))


def load_tokens(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    from safetensors.numpy import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m specdec.train.self_distill` first")
    data = load_file(str(path))
    offsets = data["offsets"]
    return [data["ids"][a:b] for a, b in zip(offsets[:-1], offsets[1:])], data["prompt_lengths"]


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/self_distill")
def main(cfg: DictConfig) -> None:
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model, tokenizer = instantiate(cfg.target.load)
    started = time.perf_counter()
    sequences, prompt_lengths = distill(model, tokenizer, int(cfg.prompts), int(cfg.max_new_tokens),
                                        int(cfg.batch_size), bool(cfg.do_sample), float(cfg.temperature), int(cfg.seed))
    save_tokens(work / "tokens.safetensors", sequences, prompt_lengths)
    answer_tokens = sum(len(s) - p for s, p in zip(sequences, prompt_lengths))
    info = {"target": cfg.target.name, "prompts": len(sequences), "answer_tokens": answer_tokens,
            "tokens": sum(map(len, sequences)), "seconds": time.perf_counter() - started,
            "config": OmegaConf.to_container(cfg, resolve=True)}
    (work / "data.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("%d answers, %d answer tokens in %.0f s -> %s", len(sequences), answer_tokens, info["seconds"], work)


if __name__ == "__main__":
    main()
