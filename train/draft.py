"""``python -m specdec.train.draft``: distil a small Llama draft with a reduced vocabulary from the target (JAX/Flax).

Data: the teacher shards of ``python -m specdec.train.teacher`` (corpus v2 conversations, the
target's top-k law at every answer position), packed into rows (:mod:`specdec.train.packing`).

The draft (draft-v2 layout, :func:`specdec.heads.llama_flax.export_reduced`):

* embeds tokens as the target's own embeddings through a learned projection (no embedding table
  of its own: its rare tokens get the target's geometry for free, and the artifact stays small);
* projects onto a reduced vocabulary, the ``vocab_size`` tokens the target itself emits most
  often in the teacher data (FR-Spec), EOS always included.

Loss per answer position: ``alpha`` x cross-entropy on the next token (skipped when it is outside
the draft vocabulary) + (1 - alpha) x cross-entropy to the target's top-k law renormalised over
the draft vocabulary.  Held-out metrics: loss, top-1 agreement with the target's argmax (greedy
acceptance at the first draft position, up to context), and vocabulary coverage (share of answer
positions whose target argmax the draft can propose).

Initialisation: the projection is the target embeddings' top principal directions, and the head's
rows are the projected embeddings of its tokens (tied-like start).  The export is measured at
work for its card: acceptance per position and per benchmark category, and cost against the target.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from specdec.heads.llama_flax import DraftConfig, LlamaDraft, config_from_hf, export_reduced

from .command import command_line
from .loop import TrainConfig, train
from .packing import PackedTeacher, load_arrays, mixed_batch
from .vocabulary import setup, vocabulary_report

log = logging.getLogger("specdec.train.draft")


def make_loss(module: LlamaDraft, alpha: float):
    """``loss_fn(params, batch) -> (loss, aux)``; batches carry the target's embeddings of their tokens."""

    def loss_fn(params, batch):
        logits = module.apply({"params": params}, batch["input_ids"], batch["segment_ids"] > 0, batch["at"],
                              batch["inputs_embeds"], batch["positions"], batch["segment_ids"])
        logq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        weight = batch["weight"]
        count = jnp.maximum(weight.sum(), 1.0)
        soft = -(batch["soft_probs"] * jnp.take_along_axis(logq, batch["soft_ids"], -1)).sum(-1)
        has_label = batch["label"] >= 0
        hard = -jnp.take_along_axis(logq, jnp.maximum(batch["label"], 0)[..., None], -1)[..., 0]
        hard_mean = (hard * has_label * weight).sum() / jnp.maximum((has_label * weight).sum(), 1.0)
        soft_mean = (soft * weight).sum() / count
        top1 = (jnp.argmax(logits, -1) == batch["argmax"]) & (batch["argmax"] >= 0)
        aux = {"ce": hard_mean, "soft_ce": soft_mean, "top1": (top1 * weight).sum() / count,
               "coverage": ((batch["argmax"] >= 0) * weight).sum() / count}
        return alpha * hard_mean + (1 - alpha) * soft_mean, aux

    return loss_fn


def make_evaluate(loss_fn, data: PackedTeacher, batch_size: int, rows: int):
    compute = jax.jit(loss_fn)
    picked = list(range(min(rows, len(data))))

    def evaluate(params) -> dict:
        totals, n = {}, 0
        for start in range(0, len(picked), batch_size):
            chunk = picked[start:start + batch_size]
            chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # fixed shapes: one compile
            loss, aux = compute(params, data.batch(chunk))
            for key, value in {"loss": loss, **aux}.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            n += 1
        return {f"heldout_{k}": v / n for k, v in totals.items()}

    return evaluate


def init_params(module: LlamaDraft, config: DraftConfig, embeddings: np.ndarray, token_ids: np.ndarray,
                seed: int) -> dict:
    """Fresh parameters with the projection on the embeddings' principal directions and a tied-like head."""
    params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32), None, None,
                         jnp.zeros((1, 4, config.embed_dim)))["params"]
    params = jax.device_get(params)
    centred = embeddings - embeddings.mean(0)
    _, _, vt = np.linalg.svd(centred[np.random.default_rng(seed).choice(len(centred), 8192, replace=False)],
                             full_matrices=False)
    projection = vt[: config.hidden_size].T.astype(np.float32)  # [H_target, H]
    projected = embeddings[token_ids] @ projection
    params["embed_projection"]["kernel"] = jnp.asarray(projection)
    params["lm_head"]["kernel"] = jnp.asarray((projected * 0.02 / max(float(projected.std()), 1e-8)).T)
    return params


def params_from_checkpoint(path, like: dict) -> dict:
    """The parameters of a training checkpoint (:func:`specdec.train.loop.save_checkpoint`), shaped like ``like``."""
    from flax import serialization

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no checkpoint at {path}")
    restored = serialization.msgpack_restore(path.read_bytes())["params"]
    params = serialization.from_state_dict(like, restored)
    for (name, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_leaves(like)):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"init_from {path}: {jax.tree_util.keystr(name)} has shape {np.shape(a)}, "
                             f"this draft needs {np.shape(b)}")
    return params


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/draft")
def main(cfg: DictConfig) -> None:
    run = setup(cfg)
    model, tokenizer, teacher, counts, token_ids, to_draft = (run.model, run.tokenizer, run.teacher, run.counts,
                                                              run.token_ids, run.to_draft)
    embeddings = run.embeddings
    config = replace(config_from_hf(model.config), **OmegaConf.to_container(cfg.model, resolve=True),
                     embed_dim=embeddings.shape[1], draft_vocab_size=len(token_ids), tie_word_embeddings=False)
    sizes = None
    if cfg.get("vocab_sizes"):  # coverage and cost of a few draft vocabularies, before choosing one
        from .vocabulary import cost_by_size

        sizes = cost_by_size(run, config, tuple(int(v) for v in cfg.vocab_sizes))
        log.info("draft vocabulary sizes: %s", sizes)
    train_arrays = load_arrays(teacher, "train")
    valid_arrays = load_arrays(teacher, "valid")
    rows = dict(row_length=int(cfg.row_length), answers_per_row=int(cfg.answers_per_row), embeddings=embeddings)
    train_data = PackedTeacher(train_arrays, to_draft, seed=int(cfg.optim.seed), **rows)
    valid_data = PackedTeacher(valid_arrays, to_draft, seed=1, **rows)
    log.info("draft vocabulary %d tokens; %d train rows (%d answer positions), %d valid rows",
             len(token_ids), len(train_data), train_data.answer_positions, len(valid_data))
    module = LlamaDraft(config)
    tcfg = TrainConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    params = init_params(module, config, embeddings, token_ids, tcfg.seed)
    loss_fn = make_loss(module, float(cfg.alpha))
    evaluate = make_evaluate(loss_fn, valid_data, tcfg.batch_size, int(cfg.eval_rows))

    rollouts = None
    if cfg.get("rollouts_dir"):  # the draft's own rollouts, teacher-forced: soft targets only (DistillSpec)
        rollouts = PackedTeacher(load_arrays(cfg.rollouts_dir, "train"), to_draft, seed=int(cfg.optim.seed) + 7,
                                 hard_labels=False, **rows)
        log.info("rollouts: %d rows (%d answer positions), %.0f%% of every batch", len(rollouts),
                 rollouts.answer_positions, 100 * float(cfg.rollouts_fraction))
    n_rollout = 0 if rollouts is None else int(round(tcfg.batch_size * float(cfg.rollouts_fraction)))
    if rollouts is not None and not 0 < n_rollout < tcfg.batch_size:
        raise ValueError(f"rollouts_fraction {cfg.rollouts_fraction} of batch {tcfg.batch_size} leaves "
                         f"{n_rollout} rollout rows: choose one that leaves both kinds")

    def batch_at(step: int) -> dict:
        if rollouts is None:
            return train_data.batch(np.random.default_rng([tcfg.seed, step]).integers(0, len(train_data),
                                                                                      tcfg.batch_size))
        return mixed_batch([(train_data, tcfg.batch_size - n_rollout), (rollouts, n_rollout)], tcfg.seed, step)

    if cfg.get("init_from"):  # continue from another run's checkpoint (parameters only, a fresh schedule)
        params = params_from_checkpoint(cfg.init_from, params)

    work = Path(cfg.work_dir)
    checkpoint = work / f"draft-{cfg.name}-v{len(token_ids)}.ckpt" if cfg.resume else None
    result = train(loss_fn, params, batch_at, tcfg, evaluate, checkpoint, bool(cfg.progress))
    final = evaluate(result.params)
    sizes = jax.tree_util.tree_map(lambda x: x.size, result.params)
    card = {"kind": "specdec-draft-v2", "target": cfg.target.name, "config": config.__dict__,
            "parameters": int(sum(jax.tree_util.tree_leaves(sizes))),
            "vocabulary": {"size": len(token_ids), "chosen_from": "the target's argmax at train answer positions",
                           "train_coverage": vocabulary_report(counts), "cost_by_size": sizes,
                           "heldout_coverage": final.get("heldout_coverage")},
            "data": {"teacher": str(teacher), "train_rows": len(train_data),
                     "rollouts": None if rollouts is None else {
                         "teacher": str(cfg.rollouts_dir), "rows": len(rollouts),
                         "answer_positions": rollouts.answer_positions, "rows_per_batch": n_rollout},
                     "init_from": cfg.get("init_from"),
                     "train_answer_positions": train_data.answer_positions,
                     "valid_answer_positions": valid_data.answer_positions,
                     "epochs": round(tcfg.steps * tcfg.batch_size / max(len(train_data), 1), 2)},
            "training": {"steps": result.step, "batch_size": tcfg.batch_size, "learning_rate": tcfg.learning_rate,
                         "alpha": float(cfg.alpha), "seconds": round(result.seconds), "jax_devices": jax.device_count()},
            "losses": {"history": result.history, "heldout": final},
            "command": command_line("specdec.train.draft")}
    folder = Path(hydra.utils.to_absolute_path(cfg.export_dir))
    export_reduced(result.params, config, token_ids, folder, extra=card)
    if cfg.measure.enabled:
        from specdec import drafters

        from .measure import acceptance, relative_cost

        draft = drafters.load_draft_model(model, folder)
        make = lambda: drafters.DraftModel(draft, int(cfg.measure.num_tokens))  # noqa: E731
        card["measured"] = {"chain": int(cfg.measure.num_tokens),
                            **acceptance(model, tokenizer, make, int(cfg.measure.per_category),
                                         int(cfg.measure.max_new_tokens)),
                            "cost": relative_cost(model, tokenizer, make)}
        (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    log.info("exported %s: %s, measured %s", folder, final, card.get("measured"))


if __name__ == "__main__":
    main()
