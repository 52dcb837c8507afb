"""``python -m specdec.train.medusa``: train Medusa heads on the feature shards, then export them.

Loss: per head k = 1..K the cross-entropy of its guess of token t+1+k, weighted by
``decay**(k-1)`` (0.8 in the Medusa paper), summed.  Held-out metrics: per head the share of
positions where the label is the i-th ranked guess (``top_k_accuracy``, which the sparse tree
is built from), top-1 and top-5.  Export: ``medusa.safetensors`` (bf16) and ``card.json``
(data, steps, losses, accuracies, tree, acceptance measured with specdec on held-out prompts).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import jax
import jax.numpy as jnp
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from specdec.heads.medusa_flax import MedusaHeadsFlax, from_tensors, to_tensors

from .features import load_split
from .loop import TrainConfig, cross_entropy, train

log = logging.getLogger("specdec.train.medusa")
RANKS = 10  # ranks kept in top_k_accuracy


def head_weights(num_heads: int, decay: float) -> np.ndarray:
    return np.asarray([decay ** k for k in range(num_heads)], dtype=np.float32)


def make_loss(module: MedusaHeadsFlax, lm_head: jnp.ndarray, decay: float):
    weights = jnp.asarray(head_weights(module.num_heads, decay))

    def loss_fn(params, batch):
        logits = module.apply({"params": params}, batch["hidden"]) @ lm_head.T  # [K, B, V]
        losses, top1 = [], []
        for k in range(module.num_heads):
            labels = batch["labels"][:, 1 + k]
            nll, valid = cross_entropy(logits[k], labels)
            count = jnp.maximum(valid.sum(), 1)
            losses.append(nll.sum() / count)
            top1.append(((jnp.argmax(logits[k], -1) == labels) & valid).sum() / count)
        losses = jnp.stack(losses)
        return (weights * losses).sum(), {"head_loss": losses, "top1": jnp.stack(top1)}

    return loss_fn


def make_evaluate(module: MedusaHeadsFlax, lm_head: jnp.ndarray, hidden: np.ndarray, labels: np.ndarray,
                  chunk: int = 256):
    """Held-out metrics: per head loss, top-1, top-5 and the rank histogram of the label."""

    @jax.jit
    def ranks_and_nll(params, h, lab):
        logits = module.apply({"params": params}, h) @ lm_head.T  # [K, B, V]
        out_ranks, out_nll = [], []
        for k in range(module.num_heads):
            y = lab[:, 1 + k]
            safe = jnp.where(y >= 0, y, 0)
            own = jnp.take_along_axis(logits[k], safe[:, None], -1)
            out_ranks.append(jnp.where(y >= 0, (logits[k] > own).sum(-1), -1))
            out_nll.append(cross_entropy(logits[k], y)[0])
        return jnp.stack(out_ranks), jnp.stack(out_nll)

    def evaluate(params, detailed: bool = False) -> dict:
        ranks, nll = [], []
        for start in range(0, len(hidden), chunk):
            r, n = ranks_and_nll(params, hidden[start:start + chunk], labels[start:start + chunk])
            ranks.append(np.asarray(r))
            nll.append(np.asarray(n))
        ranks, nll = np.concatenate(ranks, 1), np.concatenate(nll, 1)
        metrics = {}
        table = []
        for k in range(module.num_heads):
            valid = ranks[k] >= 0
            r = ranks[k][valid]
            metrics[f"top1_h{k + 1}"] = float((r == 0).mean())
            table.append({"loss": float(nll[k][valid].mean()), "top1": float((r == 0).mean()),
                          "top5": float((r < 5).mean()),
                          "rank_accuracy": [float((r == i).mean()) for i in range(RANKS)]})
        return {"heads": table, **metrics} if detailed else metrics

    return evaluate


def fit(hidden, labels, valid_hidden, valid_labels, lm_head: np.ndarray, num_heads: int, decay: float,
        cfg: TrainConfig, checkpoint=None, progress: bool = True, devices=None):
    """Train K heads; returns (params, TrainResult, evaluate)."""
    if labels.shape[1] - 1 < num_heads:
        raise ValueError(f"the features hold labels for {labels.shape[1] - 1} heads; asked to train {num_heads}")
    module = MedusaHeadsFlax(hidden.shape[1], num_heads)
    lm = jnp.asarray(lm_head, dtype=jnp.float32)
    params = module.init(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, hidden.shape[1])))["params"]

    def batch_at(step: int) -> dict:
        rows = np.random.default_rng([cfg.seed, step]).integers(0, len(hidden), cfg.batch_size)
        return {"hidden": hidden[rows], "labels": labels[rows]}

    evaluate = make_evaluate(module, lm, valid_hidden, valid_labels)
    result = train(make_loss(module, lm, decay), params, batch_at, cfg, evaluate, checkpoint, progress, devices)
    return result.params, result, evaluate


def export(params, folder: Path, card: dict) -> None:
    """``medusa.safetensors`` in bf16 (the torch module's keys) and ``card.json``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(v).to(torch.bfloat16).contiguous() for k, v in to_tensors(params).items()}
    save_file(tensors, str(folder / "medusa.safetensors"))
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def measure_acceptance(model, tokenizer, folder: Path, prompts: list, max_new_tokens: int) -> dict:
    """Mean accepted tokens of the exported heads with specdec (greedy) on held-out prompts."""
    import specdec
    from specdec import drafters
    from specdec.chat import encode_chat as encode

    drafter = drafters.Medusa.from_pretrained(folder, model)
    tokens = steps = 0
    for chat in prompts:
        ids = encode(tokenizer, chat)
        with torch.inference_mode():
            out = specdec.generate(model, ids, drafter, max_new_tokens=max_new_tokens)
        tokens += out.stats.tokens_generated
        steps += out.stats.steps
    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "mean_accepted_tokens": tokens / steps}


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/medusa")
def main(cfg: DictConfig) -> None:
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    from specdec.medusa_tree import build_sparse_tree, expected_accepted

    from .corpus import training_prompts

    work = Path(cfg.work_dir)
    model, tokenizer = instantiate(cfg.target.load)
    lm_head = model.get_output_embeddings().weight.detach().float().numpy()
    hidden, labels = load_split(work / "features", "train")
    valid_hidden, valid_labels = load_split(work / "features", "valid")
    tcfg = TrainConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    log.info("%d training positions, %d held out, %d JAX devices", len(hidden), len(valid_hidden), jax.device_count())
    # named after the data too, so that new features never resume an old run
    checkpoint = work / f"medusa-k{cfg.num_heads}-n{len(hidden)}.ckpt" if cfg.resume else None
    params, result, evaluate = fit(hidden, labels, valid_hidden, valid_labels, lm_head, int(cfg.num_heads),
                                   float(cfg.decay), tcfg, checkpoint, bool(cfg.progress))
    heldout = evaluate(params, detailed=True)["heads"]
    accuracy = [h["rank_accuracy"] for h in heldout]
    tree = build_sparse_tree(accuracy, int(cfg.tree_nodes))
    data_info = json.loads((work / "data.json").read_text()) if (work / "data.json").is_file() else {}
    features_info = json.loads((work / "features" / "features.json").read_text())
    card = {
        "kind": "medusa",
        "target": cfg.target.name,
        "num_heads": int(cfg.num_heads),
        "hidden_size": int(hidden.shape[1]),
        "dtype": "bfloat16",
        "data": {"prompts": data_info.get("prompts"), "answer_tokens": data_info.get("answer_tokens"),
                 "corpus": "train/corpus.py (not the benchmark prompts)", "features": features_info["splits"]},
        "training": {"steps": result.step, "batch_size": tcfg.batch_size, "learning_rate": tcfg.learning_rate,
                     "decay": float(cfg.decay), "seconds": result.seconds, "jax_devices": jax.device_count(),
                     "jax_platform": jax.devices()[0].platform},
        "losses": {"history": result.history, "heldout_per_head": [h["loss"] for h in heldout]},
        "heldout": [{"head": k + 1, "top1": h["top1"], "top5": h["top5"]} for k, h in enumerate(heldout)],
        "top_k_accuracy": accuracy,
        "tree": [list(p) for p in tree],
        "tree_expected_accepted": expected_accepted(tree, accuracy),
        "command": "python -m specdec.train.self_distill && python -m specdec.train.features && "
                   "python -m specdec.train.medusa",
    }
    folder = Path(hydra.utils.to_absolute_path(cfg.export_dir))
    export(params, folder, card)
    # acceptance on the held-out prompts: the distilled prompts whose answers are in the valid split
    held_out = features_info["splits"]["valid"]["sequences"]
    count = min(int(cfg.measure.prompts), held_out)
    seed = int(data_info.get("config", {}).get("seed", 0))  # the prompts self_distill answered
    valid_prompts = training_prompts(int(data_info["prompts"]), seed)[-count:] if count and data_info else []
    if valid_prompts:
        card["measured"] = measure_acceptance(model, tokenizer, folder, valid_prompts, int(cfg.measure.max_new_tokens))
        (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    log.info("exported %s: held-out top-1 %s, tree of %d nodes, measured %s", folder,
             [round(h["top1"], 3) for h in heldout], len(tree), card.get("measured"))


if __name__ == "__main__":
    main()
