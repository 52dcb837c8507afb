"""``python -m specdec.train.medusa``: Medusa heads over a reduced vocabulary, trained on the teacher shards.

Head k = 1..K reads the target's final hidden state h_t at an answer position t and guesses token
t+1+k.  Its logits are its residual block's output times the rows of the target's own output head
for the draft vocabulary (the ``vocab_size`` tokens the target emits most; those rows are frozen),
so a head costs a fraction of the full 49k-row head.

Loss per head: ``alpha`` x cross-entropy on token t+1+k (skipped outside the draft vocabulary) +
(1 - alpha) x cross-entropy to the target's own top-k law for that token (at position t+k,
renormalised over the draft vocabulary), weighted ``decay**(k-1)`` as in the Medusa paper.
Held-out metrics per head: the rank histogram of the label (``top_k_accuracy``, which the
sparse tree is built from), top-1 and top-5.  Export: ``medusa.safetensors`` (bf16, with
``vocab.token_ids``) and ``card.json``, measured at work (acceptance per position and per
benchmark category, cost against the target).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import jax
import jax.numpy as jnp
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from specdec.heads.medusa_flax import MedusaHeadsFlax, to_tensors

from .vocabulary import setup, vocabulary_report
from .command import command_line
from .loop import TrainConfig, train

log = logging.getLogger("specdec.train.medusa")
RANKS = 10  # ranks kept in top_k_accuracy


def medusa_arrays(folder: str | Path, split: str, num_heads: int, max_positions: int | None = None,
                  seed: int = 0) -> dict:
    """Answer-position hidden states [N, H] (fp16) with, per head k, the token t+1+k and the row of the
    target's top-k law for it (-1 where t+1+k is not an answer token of the same sequence)."""
    from safetensors import safe_open

    paths = [p for p in sorted(Path(folder).glob(f"{split}-*.safetensors")) if p.with_suffix(".json").is_file()]
    if not paths:
        raise FileNotFoundError(f"no {split} shards in {folder}: run `python -m specdec.train.teacher` first")
    hidden, labels, rows, top_ids, top_lp, base = [], [], [], [], [], 0
    for path in paths:
        with safe_open(str(path), framework="numpy") as f:
            tokens, answer, offsets = f.get_tensor("tokens"), f.get_tensor("answer"), f.get_tensor("offsets")
            positions = np.flatnonzero(answer)
            hidden.append(f.get_slice("hidden")[:][positions] if len(positions) else np.zeros((0, 0), np.float16))
            top_ids.append(f.get_tensor("topk_ids"))
            top_lp.append(f.get_tensor("topk_logprobs"))
        rank = np.cumsum(answer) - 1  # the top-k row of each answer position
        end = offsets[np.searchsorted(offsets, positions, side="right")]  # end of each position's sequence
        lab = np.full((len(positions), num_heads), -1, np.int32)
        row = np.full((len(positions), num_heads), -1, np.int64)
        for k in range(1, num_heads + 1):
            q = positions + k  # the position whose state predicts token t+1+k
            ok = (q + 1 < end) & answer[np.minimum(q, len(answer) - 1)]
            lab[ok, k - 1] = tokens[q[ok] + 1]
            row[ok, k - 1] = rank[q[ok]] + base
        labels.append(lab)
        rows.append(row)
        base += len(top_ids[-1])
    out = {"hidden": np.concatenate(hidden), "labels": np.concatenate(labels), "rows": np.concatenate(rows),
           "topk_ids": np.concatenate(top_ids), "topk_logprobs": np.concatenate(top_lp)}
    if max_positions is not None and len(out["hidden"]) > max_positions:
        keep = np.sort(np.random.default_rng(seed).choice(len(out["hidden"]), max_positions, replace=False))
        for key in ("hidden", "labels", "rows"):
            out[key] = out[key][keep]
    return out


def make_batch(data: dict, to_draft: np.ndarray, rows: np.ndarray) -> dict:
    """Hidden states [B, H], labels [B, K] in the draft vocabulary (-1: none), and the soft targets [B, K, k]."""
    label = data["labels"][rows]
    mapped = np.where(label >= 0, to_draft[np.maximum(label, 0)], -1)
    top = data["rows"][rows]  # [B, K]
    ids = to_draft[data["topk_ids"][np.maximum(top, 0)]]  # [B, K, k]
    probs = np.exp(data["topk_logprobs"][np.maximum(top, 0)].astype(np.float32)) * (ids >= 0) * (top >= 0)[..., None]
    mass = probs.sum(-1, keepdims=True)
    return {"hidden": data["hidden"][rows].astype(np.float32), "label": mapped.astype(np.int32),
            "soft_ids": np.maximum(ids, 0).astype(np.int32),
            "soft_probs": np.where(mass > 0, probs / np.maximum(mass, 1e-30), 0.0).astype(np.float32),
            "has_soft": (mass[..., 0] > 0).astype(np.float32)}


def make_loss(module: MedusaHeadsFlax, head_rows: jnp.ndarray, alpha: float, decay: float):
    weights = jnp.asarray([decay ** k for k in range(module.num_heads)], jnp.float32)

    def loss_fn(params, batch):
        states = module.apply({"params": params}, batch["hidden"])  # [K, B, H]
        logq = jax.nn.log_softmax(states @ head_rows.T, axis=-1)  # [K, B, V']
        losses, top1 = [], []
        for k in range(module.num_heads):
            label = batch["label"][:, k]
            has = label >= 0
            hard = -jnp.take_along_axis(logq[k], jnp.maximum(label, 0)[:, None], -1)[:, 0]
            soft = -(batch["soft_probs"][:, k] * jnp.take_along_axis(logq[k], batch["soft_ids"][:, k], -1)).sum(-1)
            hard_mean = (hard * has).sum() / jnp.maximum(has.sum(), 1)
            soft_mean = (soft * batch["has_soft"][:, k]).sum() / jnp.maximum(batch["has_soft"][:, k].sum(), 1)
            losses.append(alpha * hard_mean + (1 - alpha) * soft_mean)
            top1.append(((jnp.argmax(logq[k], -1) == label) & has).sum() / jnp.maximum(has.sum(), 1))
        losses = jnp.stack(losses)
        return (weights * losses).sum(), {"head_loss": losses, "top1": jnp.stack(top1)}

    return loss_fn


def make_evaluate(module: MedusaHeadsFlax, head_rows: jnp.ndarray, data: dict, to_draft: np.ndarray,
                  chunk: int = 512, limit: int = 20000):
    """Held-out per-head top-1, top-5 and rank histogram of the label (outside the vocabulary: a miss)."""
    rows = np.arange(min(limit, len(data["hidden"])))

    @jax.jit
    def ranks(params, hidden, label):
        states = module.apply({"params": params}, hidden)
        logits = states @ head_rows.T  # [K, B, V']
        own = jnp.take_along_axis(logits, jnp.maximum(label.T, 0)[..., None], -1)  # [K, B, 1]
        rank = (logits > own).sum(-1)
        return jnp.where(label.T >= 0, rank, RANKS + 1)  # [K, B]

    def evaluate(params, detailed: bool = False) -> dict:
        got, present = [], []
        for start in range(0, len(rows), chunk):
            batch = make_batch(data, to_draft, rows[start:start + chunk])
            got.append(np.asarray(ranks(params, batch["hidden"], batch["label"])))
            present.append((data["labels"][rows[start:start + chunk]] >= 0).T)
        r, has = np.concatenate(got, 1), np.concatenate(present, 1)
        metrics, table = {}, []
        for k in range(module.num_heads):
            rk = r[k][has[k]]  # positions where token t+1+k exists; outside the vocabulary counts as a miss
            metrics[f"top1_h{k + 1}"] = float((rk == 0).mean())
            table.append({"top1": float((rk == 0).mean()), "top5": float((rk < 5).mean()),
                          "rank_accuracy": [float((rk == i).mean()) for i in range(RANKS)]})
        return {"heads": table, **metrics} if detailed else metrics

    return evaluate


def fit(train_data: dict, valid_data: dict, head_rows: np.ndarray, to_draft: np.ndarray, num_heads: int,
        alpha: float, decay: float, cfg: TrainConfig, checkpoint=None, progress: bool = True, devices=None):
    """Train ``num_heads`` heads on :func:`medusa_arrays`-shaped data; returns (params, TrainResult, evaluate)."""
    width = int(train_data["hidden"].shape[1])
    module = MedusaHeadsFlax(width, num_heads)
    rows = jnp.asarray(head_rows, jnp.float32)
    params = module.init(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, width)))["params"]
    evaluate = make_evaluate(module, rows, valid_data, to_draft)

    def batch_at(step: int) -> dict:
        picked = np.random.default_rng([cfg.seed, step]).integers(0, len(train_data["hidden"]), cfg.batch_size)
        return make_batch(train_data, to_draft, picked)

    result = train(make_loss(module, rows, alpha, decay), params, batch_at, cfg, evaluate, checkpoint, progress, devices)
    return result.params, result, evaluate


def export(params, token_ids: np.ndarray, folder: Path, card: dict) -> None:
    """``medusa.safetensors`` in bf16 (the torch module's keys, plus ``vocab.token_ids``) and ``card.json``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(v).to(torch.bfloat16).contiguous() for k, v in to_tensors(params).items()}
    tensors["vocab.token_ids"] = torch.from_numpy(np.asarray(token_ids, np.int64))
    save_file(tensors, str(folder / "medusa.safetensors"))
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/medusa")
def main(cfg: DictConfig) -> None:
    from specdec.medusa_tree import build_sparse_tree, expected_accepted

    run = setup(cfg)
    model, tokenizer, teacher, counts, token_ids, to_draft = (run.model, run.tokenizer, run.teacher, run.counts,
                                                              run.token_ids, run.to_draft)
    head_rows = run.head_rows
    k = int(cfg.num_heads)
    train_data = medusa_arrays(teacher, "train", k, cfg.max_positions, int(cfg.optim.seed))
    valid_data = medusa_arrays(teacher, "valid", k)
    tcfg = TrainConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    log.info("%d training positions, %d held out, vocabulary %d", len(train_data["hidden"]),
             len(valid_data["hidden"]), len(token_ids))
    work = Path(cfg.work_dir)
    checkpoint = work / f"medusa-k{k}-v{len(token_ids)}.ckpt" if cfg.resume else None
    params, result, evaluate = fit(train_data, valid_data, head_rows, to_draft, k, float(cfg.alpha), float(cfg.decay),
                                   tcfg, checkpoint, bool(cfg.progress))
    heldout = evaluate(params, detailed=True)["heads"]
    accuracy = [h["rank_accuracy"] for h in heldout]
    tree = build_sparse_tree(accuracy, int(cfg.tree_nodes))
    card = {
        "kind": "medusa", "target": cfg.target.name, "num_heads": k, "hidden_size": int(train_data["hidden"].shape[1]),
        "dtype": "bfloat16",
        "vocabulary": {"size": len(token_ids), "rows": "the target's own output head, frozen",
                       "train_coverage": vocabulary_report(counts)},
        "data": {"teacher": str(teacher), "train_positions": int(len(train_data["hidden"])),
                 "valid_positions": int(len(valid_data["hidden"]))},
        "training": {"steps": result.step, "batch_size": tcfg.batch_size, "learning_rate": tcfg.learning_rate,
                     "alpha": float(cfg.alpha), "decay": float(cfg.decay), "seconds": round(result.seconds),
                     "jax_devices": jax.device_count()},
        "losses": {"history": result.history},
        "heldout": [{"head": i + 1, "top1": h["top1"], "top5": h["top5"]} for i, h in enumerate(heldout)],
        "top_k_accuracy": accuracy,
        "tree": [list(p) for p in tree],
        "tree_expected_accepted": expected_accepted(tree, accuracy),
        "command": command_line("specdec.train.medusa"),
    }
    folder = Path(hydra.utils.to_absolute_path(cfg.export_dir))
    export(params, token_ids, folder, card)
    if cfg.measure.enabled:
        from specdec import drafters

        from .measure import acceptance, relative_cost

        drafter = drafters.Medusa.from_pretrained(folder, model)
        card["measured"] = {**acceptance(model, tokenizer, lambda: drafter, int(cfg.measure.per_category),
                                         int(cfg.measure.max_new_tokens)),
                            "cost": relative_cost(model, tokenizer, lambda: drafter)}
        (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    log.info("exported %s: held-out top-1 %s, tree of %d nodes, measured %s", folder,
             [round(h["top1"], 3) for h in heldout], len(tree), card.get("measured"))


if __name__ == "__main__":
    main()
