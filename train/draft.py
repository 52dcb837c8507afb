"""``python -m specdec.train.draft``: distil a small Llama-style draft from the target (JAX/Flax), export it for Hugging Face.

Data: the target's own answers (``self_distill``) and, per answer position, the target's top-k
logits (``teacher``, computed here once and cached in ``work_dir``).  Loss per answer position:
``alpha * CE(next token) + (1 - alpha) * CE(softmax(target top-k), draft)``, the second term
being the KL to the target's top-k law up to a constant.  The draft starts from the target
where shapes allow: its embeddings (projected onto their top principal directions when the
draft is narrower, tied to the output head) and, at equal width, its first layers.  Training
runs through :func:`specdec.train.loop.train` (data-parallel, checkpoints, progress); the
result is a ``LlamaForCausalLM`` directory with a card.
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

from specdec.heads.llama_flax import DraftConfig, LlamaDraft, export_hf, from_hf_state_dict

from .loop import TrainConfig, train
from .self_distill import load_tokens

log = logging.getLogger("specdec.train.draft")


# ---- the teacher's signal ---------------------------------------------------------------------
@torch.no_grad()
def teacher_topk(model, sequences, prompt_lengths, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k logits [N, k] and their ids [N, k] at every answer position, and per-sequence offsets [n+1]."""
    values, ids, offsets = [], [], [0]
    for seq, plen in zip(sequences, prompt_lengths):
        logits = model(torch.tensor(seq[None].astype(np.int64))).logits[0, int(plen) - 1: len(seq) - 1]
        top = torch.topk(logits.float(), k, dim=-1)
        values.append(top.values.numpy())
        ids.append(top.indices.numpy().astype(np.int32))
        offsets.append(offsets[-1] + len(logits))
    return np.concatenate(values), np.concatenate(ids), np.asarray(offsets, dtype=np.int64)


# ---- batches -----------------------------------------------------------------------------------
class DistillData:
    """Right-padded batches of sequences with the teacher's top-k at (up to ``max_answer``) answer positions."""

    def __init__(self, sequences, prompt_lengths, values, ids, offsets, max_length: int, k: int,
                 max_answer: int | None = None):
        self.sequences, self.prompt_lengths = sequences, prompt_lengths
        self.values, self.ids, self.offsets = values[:, :k], ids[:, :k], offsets
        self.max_length, self.k = max_length, k
        self.max_answer = max_answer if max_answer is not None else max_length

    def __len__(self):
        return len(self.sequences)

    def batch(self, rows) -> dict:
        """``at`` [B, A]: positions whose next token is an answer token; ``labels`` -1 where unused."""
        b, t, a = len(rows), self.max_length, self.max_answer
        out = {"input_ids": np.zeros((b, t), np.int32), "attention_mask": np.zeros((b, t), np.int32),
               "at": np.zeros((b, a), np.int32), "labels": np.full((b, a), -1, np.int32),
               "top_ids": np.zeros((b, a, self.k), np.int32), "top_logits": np.zeros((b, a, self.k), np.float32)}
        for r, i in enumerate(rows):
            seq, plen = self.sequences[i][:t], int(self.prompt_lengths[i])
            n = len(seq)
            out["input_ids"][r, :n] = seq
            out["attention_mask"][r, :n] = 1
            first = plen - 1
            count = max(0, min(n - 1 - first, a))  # answer positions inside the window
            if count:
                out["at"][r, :count] = np.arange(first, first + count)
                out["labels"][r, :count] = seq[first + 1: first + 1 + count]
                start = self.offsets[i]
                out["top_ids"][r, :count] = self.ids[start:start + count]
                out["top_logits"][r, :count] = self.values[start:start + count]
        return out


def make_loss(module: LlamaDraft, alpha: float):
    def loss_fn(params, batch):
        logits = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["at"])
        logq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        valid = batch["labels"] >= 0
        count = jnp.maximum(valid.sum(), 1)
        ce = -jnp.take_along_axis(logq, jnp.where(valid, batch["labels"], 0)[..., None], -1)[..., 0]
        p = jax.nn.softmax(batch["top_logits"], axis=-1)
        logq_top = jnp.take_along_axis(logq, batch["top_ids"], -1)
        soft = -(p * logq_top).sum(-1)
        kl = (p * (jnp.log(jnp.maximum(p, 1e-30)) - logq_top)).sum(-1)  # KL(target top-k || draft) on the top-k
        ce_mean = jnp.where(valid, ce, 0).sum() / count
        soft_mean = jnp.where(valid, soft, 0).sum() / count
        top1 = (jnp.argmax(logits, -1) == batch["labels"]) & valid
        aux = {"ce": ce_mean, "kl": jnp.where(valid, kl, 0).sum() / count, "top1": top1.sum() / count}
        return alpha * ce_mean + (1 - alpha) * soft_mean, aux

    return loss_fn


def make_evaluate(loss_fn, data: DistillData, batch_size: int):
    compute = jax.jit(loss_fn)
    rows = list(range(len(data)))

    def evaluate(params) -> dict:
        totals, n = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "top1": 0.0}, 0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # fixed shapes: one compile
            loss, aux = compute(params, data.batch(chunk))
            for key, value in {"loss": loss, **aux}.items():
                totals[key] += float(value)
            n += 1
        return {f"heldout_{k}": v / n for k, v in totals.items()}

    return evaluate


# ---- initialisation from the target -------------------------------------------------------------
def init_from_target(params, config: DraftConfig, target_state: dict, target_hidden: int) -> dict:
    """Embeddings from the target (top principal directions when narrower); layers too at equal width."""
    params = jax.device_get(params)
    embed = np.asarray(_np(target_state["model.embed_tokens.weight"]), np.float32)
    if target_hidden == config.hidden_size:
        params["embed_tokens"]["embedding"] = jnp.asarray(embed)
        params["norm"]["weight"] = jnp.asarray(_np(target_state["model.norm.weight"]))
        layers = from_hf_state_dict({**target_state, "model.embed_tokens.weight": embed},
                                    _with_layers(config, config.num_hidden_layers))
        for i in range(config.num_hidden_layers):
            params[f"layers_{i}"] = layers[f"layers_{i}"]
        if not config.tie_word_embeddings:
            head = target_state.get("lm_head.weight", target_state["model.embed_tokens.weight"])
            params["lm_head"]["kernel"] = jnp.asarray(np.asarray(_np(head), np.float32).T)
    else:
        if config.hidden_size > target_hidden:
            raise ValueError(f"draft hidden size {config.hidden_size} exceeds the target's {target_hidden}")
        _, _, vt = np.linalg.svd(embed - embed.mean(0), full_matrices=False)
        projected = embed @ vt[: config.hidden_size].T
        projected *= 0.02 / max(float(projected.std()), 1e-8)  # keep the scale of a fresh init
        params["embed_tokens"]["embedding"] = jnp.asarray(projected.astype(np.float32))
    return params


def _with_layers(config: DraftConfig, n: int) -> DraftConfig:
    from dataclasses import replace

    return replace(config, num_hidden_layers=n)


def _np(value):
    return value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def fit(data: DistillData, valid: DistillData, config: DraftConfig, cfg: TrainConfig, alpha: float,
        init: dict | None = None, checkpoint=None, progress: bool = True, devices=None):
    module = LlamaDraft(config)
    params = module.init(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, 4), jnp.int32))["params"]
    if init is not None:
        params = init
    loss_fn = make_loss(module, alpha)

    def batch_at(step: int) -> dict:
        return data.batch(np.random.default_rng([cfg.seed, step]).integers(0, len(data), cfg.batch_size))

    evaluate = make_evaluate(loss_fn, valid, cfg.batch_size)
    result = train(loss_fn, params, batch_at, cfg, evaluate, checkpoint, progress, devices)
    return result.params, result, evaluate


def measure(model, tokenizer, folder: Path, prompts: list, max_new_tokens: int, num_tokens: int,
            cost_steps: int = 32) -> dict:
    """The exported draft at work: greedy chain acceptance on held-out prompts, and its cost.

    Acceptance comes from ``specdec.generate`` with ``DraftModel(draft, num_tokens)``; the cost
    is a one-token cached forward of the draft over the target's (median, this machine).
    """
    import specdec
    from specdec import drafters
    from specdec.measure import step_seconds
    from specdec.chat import encode_chat as encode
    from specdec.stats import DecodeStats

    draft = drafters.load_draft_model(model, folder)
    drafter = drafters.DraftModel(draft, num_tokens)
    total = DecodeStats()  # every prompt's steps pooled
    for chat in prompts:
        with torch.inference_mode():
            out = specdec.generate(model, encode(tokenizer, chat), drafter, max_new_tokens=max_new_tokens)
        total.depth_accepted.update(out.stats.depth_accepted)
        total.tokens_generated += out.stats.tokens_generated
        total.row_steps += out.stats.row_steps
    probe = encode(tokenizer, prompts[0])
    target_ms, draft_ms = (1e3 * step_seconds(m, probe, cost_steps) for m in (model, draft))
    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "num_tokens": num_tokens,
            "mean_accepted_tokens": total.mean_accepted_tokens,
            "acceptance_by_position": total.acceptance_by_position(),
            "accepted_histogram": {int(k): v for k, v in sorted(total.accepted_histogram.items())},
            "cost": {"target_ms": target_ms, "draft_ms": draft_ms, "ratio": draft_ms / target_ms,
                     "threads": torch.get_num_threads()}}


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/draft")
def main(cfg: DictConfig) -> None:
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    from specdec.heads.llama_flax import config_from_hf

    work = Path(cfg.work_dir)
    sequences, prompt_lengths = load_tokens(work / "tokens.safetensors")
    model, tokenizer = instantiate(cfg.target.load)
    k = int(cfg.teacher_topk)
    teacher_file = work / f"teacher-top{k}.npz"
    if not teacher_file.is_file():
        started = time.perf_counter()
        values, ids, offsets = teacher_topk(model, sequences, prompt_lengths, k)
        np.savez(teacher_file, values=values.astype(np.float16), ids=ids, offsets=offsets)
        log.info("teacher top-%d over %d positions in %.0f s", k, len(values), time.perf_counter() - started)
    teacher = np.load(teacher_file)
    values, ids, offsets = teacher["values"].astype(np.float32), teacher["ids"], teacher["offsets"]
    n_valid = max(1, int(round(len(sequences) * float(cfg.heldout_fraction))))
    split = len(sequences) - n_valid

    def subset(rows):
        seqs = [sequences[i] for i in rows]
        starts = [offsets[i] for i in rows]
        counts = [offsets[i + 1] - offsets[i] for i in rows]
        new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        v = np.concatenate([values[s:s + c] for s, c in zip(starts, counts)])
        d = np.concatenate([ids[s:s + c] for s, c in zip(starts, counts)])
        return DistillData(seqs, prompt_lengths[list(rows)], v, d, new_offsets, int(cfg.max_length), k,
                           int(cfg.max_answer))

    train_data, valid_data = subset(range(split)), subset(range(split, len(sequences)))
    base = config_from_hf(model.config)
    config = DraftConfig(**{**base.__dict__, **OmegaConf.to_container(cfg.model, resolve=True)})
    module = LlamaDraft(config)
    params = module.init(jax.random.PRNGKey(int(cfg.optim.seed)), jnp.zeros((1, 4), jnp.int32))["params"]
    params = init_from_target(params, config, model.state_dict(), model.config.hidden_size)
    tcfg = TrainConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    checkpoint = work / f"draft-{cfg.name}-n{int(offsets[split])}.ckpt" if cfg.resume else None  # new data: new run
    params, result, evaluate = fit(train_data, valid_data, config, tcfg, float(cfg.alpha), params, checkpoint,
                                   bool(cfg.progress))
    final = evaluate(params)
    sizes = jax.tree_util.tree_map(lambda x: x.size, params)
    card = {"kind": "llama-draft", "target": cfg.target.name, "config": config.__dict__,
            "parameters": int(sum(jax.tree_util.tree_leaves(sizes))),
            "data": {"sequences": len(train_data), "heldout_sequences": len(valid_data),
                     "answer_positions": int(offsets[split]), "teacher_topk": k},
            "training": {"steps": result.step, "batch_size": tcfg.batch_size, "learning_rate": tcfg.learning_rate,
                         "alpha": float(cfg.alpha), "seconds": result.seconds, "jax_devices": jax.device_count()},
            "losses": {"history": result.history, "heldout": final},
            "command": "python -m specdec.train.self_distill && python -m specdec.train.draft"}
    folder = Path(hydra.utils.to_absolute_path(cfg.export_dir))
    export_hf(params, config, folder, dtype="bfloat16", extra=card)
    count = min(int(cfg.measure.prompts), len(valid_data))
    if count:  # held-out prompts: the corpus prompts whose answers are the valid split's
        from .corpus import training_prompts

        data_file = work / "data.json"  # the seed self_distill drew its prompts with
        data_info = json.loads(data_file.read_text()) if data_file.is_file() else {}
        seed = int(data_info.get("config", {}).get("seed", 0))
        card["measured"] = measure(model, tokenizer, folder, training_prompts(len(sequences), seed)[-count:],
                                   int(cfg.measure.max_new_tokens), int(cfg.measure.num_tokens))
        (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    log.info("exported %s: %s, measured %s", folder, final, card.get("measured"))


if __name__ == "__main__":
    main()
