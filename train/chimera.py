"""``python -m specdec.train.chimera``: train a Chimera draft on the teacher shards (JAX/Flax/optax), export it.

Data: the teacher shards of ``python -m specdec.train.teacher`` with the target's final hidden state
at every position, packed into rows (:mod:`specdec.train.packing`).  The Flax twin
(``heads/chimera_flax.py``) runs every draft depth 1..``depths`` at once at the sampled answer
positions; depth d means the draft has drafted d-1 tokens since the last verified one, so training
covers exactly what the drafter does at work (the unroll is exact: draft entries depend on tokens
only).  Loss per depth, weighted ``decay**(d-1)``: ``alpha`` x cross-entropy on the next token
(skipped outside the draft vocabulary) + (1 - alpha) x cross-entropy to the target's top-k law at
that position, renormalised over the draft vocabulary.

Both halves of the residual head (``W_h`` on the last verified state, ``W_s`` on the draft state)
start as the target's own head rows for the draft vocabulary, as in the paper, and are trained.  Export: ``chimera.safetensors`` (bf16) with
``vocab.token_ids``, and ``card.json`` (config, tree defaults, data, steps, losses, held-out top-1
per depth, coverage, measured acceptance per position and per benchmark category, and cost).
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

from specdec.heads.chimera import ChimeraConfig
from specdec.heads.chimera_flax import ChimeraFlax, to_tensors

from .vocabulary import setup, vocabulary_report
from .command import command_line
from .loop import TrainConfig, train
from .packing import BASE_KEYS, PackedTeacher, load_arrays

log = logging.getLogger("specdec.train.chimera")


def make_loss(module: ChimeraFlax, depths: int, alpha: float, decay: float):
    weights = jnp.asarray([decay ** d for d in range(depths)], jnp.float32)

    def loss_fn(params, batch):
        logits, valid = module.apply({"params": params}, batch["inputs_embeds"], batch["prev1"], batch["prev2"],
                                     batch["hidden"], batch["positions"], batch["segment_ids"], batch["at"],
                                     depths)  # [B, D, A, V'], [B, D, A]
        logq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        w = valid * batch["weight"][:, None, :]  # [B, D, A]
        soft = -(batch["soft_probs"][:, None] * jnp.take_along_axis(logq, batch["soft_ids"][:, None], -1)).sum(-1)
        has = (batch["label"] >= 0)[:, None, :]
        hard = -jnp.take_along_axis(logq, jnp.maximum(batch["label"], 0)[:, None, :, None], -1)[..., 0]
        per_depth_hard = (hard * has * w).sum((0, 2)) / jnp.maximum((has * w).sum((0, 2)), 1.0)
        per_depth_soft = (soft * w).sum((0, 2)) / jnp.maximum(w.sum((0, 2)), 1.0)
        losses = alpha * per_depth_hard + (1 - alpha) * per_depth_soft  # [D]
        top1 = (jnp.argmax(logits, -1) == batch["argmax"][:, None, :]) & (batch["argmax"] >= 0)[:, None, :]
        top1 = (top1 * w).sum((0, 2)) / jnp.maximum(w.sum((0, 2)), 1.0)
        return (weights * losses).sum(), {"depth_loss": losses, "top1": top1}

    return loss_fn


def make_evaluate(loss_fn, data: PackedTeacher, batch_size: int, rows: int):
    compute = jax.jit(loss_fn)
    picked = list(range(min(rows, len(data))))

    def evaluate(params) -> dict:
        totals, n = None, 0
        for start in range(0, len(picked), batch_size):
            chunk = picked[start:start + batch_size]
            chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))
            loss, aux = compute(params, data.batch(chunk))
            values = np.concatenate([[float(loss)], np.asarray(aux["top1"])])
            totals = values if totals is None else totals + values
            n += 1
        totals = totals / max(n, 1)
        return {"heldout_loss": float(totals[0]), **{f"top1_d{d + 1}": float(v) for d, v in enumerate(totals[1:])}}

    return evaluate


def init_params(module: ChimeraFlax, config: ChimeraConfig, head_rows: np.ndarray, seed: int, depths: int) -> dict:
    """Fresh parameters with both halves of the residual head equal to the target's rows for the draft vocabulary."""
    h = config.hidden_size
    dummy = dict(embeds=jnp.zeros((1, 4, h)), prev1=jnp.zeros((1, 4), jnp.int32), prev2=jnp.zeros((1, 4), jnp.int32),
                 hidden=jnp.zeros((1, 4, h)), positions=jnp.arange(4)[None], segment_ids=jnp.ones((1, 4), jnp.int32),
                 at=jnp.zeros((1, 2), jnp.int32), depths=depths)
    params = jax.device_get(module.init(jax.random.PRNGKey(seed), **dummy)["params"])
    params["head"]["kernel"] = jnp.asarray(head_rows.T)
    params["head_verified"]["kernel"] = jnp.asarray(head_rows.T)
    return params


def export(params, config: ChimeraConfig, token_ids: np.ndarray, folder: Path, card: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(v).to(torch.bfloat16).contiguous() for k, v in to_tensors(params).items()}
    tensors["vocab.token_ids"] = torch.from_numpy(np.asarray(token_ids, np.int64))
    save_file(tensors, str(folder / "chimera.safetensors"))
    (folder / "card.json").write_text(json.dumps({"config": config.as_dict(), **card}, indent=2) + "\n",
                                      encoding="utf-8")


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/chimera")
def main(cfg: DictConfig) -> None:
    run = setup(cfg)
    model, tokenizer, teacher, counts, token_ids, to_draft = (run.model, run.tokenizer, run.teacher, run.counts,
                                                              run.token_ids, run.to_draft)
    embeddings, head_rows = run.embeddings, run.head_rows
    config = ChimeraConfig.from_target(model.config, len(token_ids), state_input=bool(cfg.state_input))
    keys = BASE_KEYS + ("hidden",)
    rows = dict(row_length=int(cfg.row_length), answers_per_row=int(cfg.answers_per_row), embeddings=embeddings)
    train_data = PackedTeacher(load_arrays(teacher, "train", keys, cfg.get("max_shards")), to_draft,
                               seed=int(cfg.optim.seed), **rows)
    valid_data = PackedTeacher(load_arrays(teacher, "valid", keys), to_draft, seed=1, **rows)
    depths = int(cfg.depths)
    log.info("vocabulary %d; %d train rows (%d answer positions), %d valid rows; depths %d",
             len(token_ids), len(train_data), train_data.answer_positions, len(valid_data), depths)
    module = ChimeraFlax(config)
    tcfg = TrainConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    params = init_params(module, config, head_rows, tcfg.seed, depths)
    loss_fn = make_loss(module, depths, float(cfg.alpha), float(cfg.decay))
    evaluate = make_evaluate(loss_fn, valid_data, tcfg.batch_size, int(cfg.eval_rows))

    def batch_at(step: int) -> dict:
        return train_data.batch(np.random.default_rng([tcfg.seed, step]).integers(0, len(train_data), tcfg.batch_size))

    variant = f"chimera-v{len(token_ids)}-d{depths}" + ("-s" if config.state_input else "")
    checkpoint = Path(cfg.work_dir) / f"{variant}.ckpt" if cfg.resume else None
    result = train(loss_fn, params, batch_at, tcfg, evaluate, checkpoint, bool(cfg.progress))
    final = evaluate(result.params)
    tree = {k: int(cfg.tree[k]) for k in ("depth", "branch", "width", "max_nodes")}
    card = {
        "kind": "chimera", "target": cfg.target.name, "dtype": "bfloat16", "tree": tree,
        "parameters": int(sum(np.asarray(x).size for x in jax.tree_util.tree_leaves(result.params))),
        "vocabulary": {"size": len(token_ids), "train_coverage": vocabulary_report(counts)},
        "data": {"teacher": str(teacher), "train_rows": len(train_data),
                 "train_answer_positions": train_data.answer_positions,
                 "valid_answer_positions": valid_data.answer_positions,
                 "epochs": round(tcfg.steps * tcfg.batch_size / max(len(train_data), 1), 2)},
        "training": {"steps": result.step, "batch_size": tcfg.batch_size, "learning_rate": tcfg.learning_rate,
                     "depths": depths, "alpha": float(cfg.alpha), "decay": float(cfg.decay),
                     "seconds": round(result.seconds), "jax_devices": jax.device_count()},
        "losses": {"history": result.history, "heldout": final},
        "command": command_line("specdec.train.chimera"),
    }
    folder = Path(hydra.utils.to_absolute_path(cfg.export_dir))
    export(result.params, config, token_ids, folder, card)
    if cfg.measure.enabled:
        from specdec import drafters

        from .measure import acceptance, relative_cost

        drafter = drafters.Chimera.from_pretrained(folder, model)
        card["measured"] = {**acceptance(model, tokenizer, lambda: drafter, int(cfg.measure.per_category),
                                         int(cfg.measure.max_new_tokens)),
                            "cost": relative_cost(model, tokenizer, lambda: drafter)}
        (folder / "card.json").write_text(json.dumps({"config": config.as_dict(), **card}, indent=2) + "\n",
                                          encoding="utf-8")
    log.info("exported %s: %s, measured %s", folder, final, card.get("measured"))


if __name__ == "__main__":
    main()
