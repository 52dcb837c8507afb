"""``python -m specdec.train.features``: the target's last hidden states over the distilled tokens, in shards.

For every answer position t (the hidden state that predicts token t+1) the shard holds the
final-normed hidden state and, for head k = 1..K, the token t+1+k it should guess (-1 past the
end).  The last ``heldout_fraction`` of the sequences go to ``valid-*`` shards.
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
from omegaconf import DictConfig

from .self_distill import load_tokens

log = logging.getLogger("specdec.train.features")


@torch.no_grad()
def sequence_features(model, ids: np.ndarray, prompt_length: int, num_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """Hidden states [N, H] at the answer positions and labels [N, 1+K]: the next token, then each head's."""
    tokens = torch.tensor(ids, dtype=torch.long)[None]
    hidden = model.get_decoder()(input_ids=tokens).last_hidden_state[0]
    first, last = prompt_length - 1, len(ids) - 1  # positions whose next token is an answer token
    positions = np.arange(first, last)
    labels = np.full((len(positions), 1 + num_heads), -1, dtype=np.int32)
    for j in range(1 + num_heads):
        target = positions + 1 + j
        inside = target < len(ids)
        labels[inside, j] = ids[target[inside]]
    return hidden[first:last].float().numpy(), labels


def extract(model, sequences, prompt_lengths, num_heads: int, out_dir: Path, heldout_fraction: float,
            shard_positions: int) -> dict:
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.safetensors"):
        old.unlink()
    n_valid = max(1, int(round(len(sequences) * heldout_fraction)))
    splits = {"train": range(0, len(sequences) - n_valid), "valid": range(len(sequences) - n_valid, len(sequences))}
    counts = {}
    for split, indices in splits.items():
        hidden, labels, shard, total = [], [], 0, 0
        for i in indices:
            h, lab = sequence_features(model, sequences[i], int(prompt_lengths[i]), num_heads)
            hidden.append(h)
            labels.append(lab)
            total += len(h)
            if sum(len(x) for x in hidden) >= shard_positions or i == indices[-1]:
                save_file({"hidden": np.concatenate(hidden).astype(np.float16), "labels": np.concatenate(labels)},
                          str(out_dir / f"{split}-{shard:05d}.safetensors"))
                hidden, labels, shard = [], [], shard + 1
        counts[split] = {"sequences": len(indices), "positions": total, "shards": shard}
    return counts


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All shards of a split: hidden [N, H] float32 and labels [N, 1+K] int32."""
    from safetensors.numpy import load_file

    shards = sorted(Path(folder).glob(f"{split}-*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no {split} shards in {folder}: run `python -m specdec.train.features` first")
    parts = [load_file(str(s)) for s in shards]
    return (np.concatenate([p["hidden"] for p in parts]).astype(np.float32),
            np.concatenate([p["labels"] for p in parts]))


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/features")
def main(cfg: DictConfig) -> None:
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    work = Path(cfg.work_dir)
    sequences, prompt_lengths = load_tokens(work / "tokens.safetensors")
    model, _ = instantiate(cfg.target.load)
    started = time.perf_counter()
    counts = extract(model, sequences, prompt_lengths, int(cfg.num_heads), work / "features",
                     float(cfg.heldout_fraction), int(cfg.shard_positions))
    info = {"num_heads": int(cfg.num_heads), "splits": counts, "seconds": time.perf_counter() - started}
    (work / "features" / "features.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("features: %s in %.0f s", counts, info["seconds"])


if __name__ == "__main__":
    main()
