"""One JAX/optax training loop for every draft head and draft model.

Data-parallel over every device JAX sees: the batch is split along a ``data`` mesh axis and
the parameters are replicated (``jax.sharding``); on one device it is an ordinary jitted step.
Batches are drawn from the step number, so a run resumed from a checkpoint sees the same
batches as one that never stopped.  Checkpoints hold parameters, optimiser state and the step
(``flax.serialization`` msgpack, written atomically).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@dataclass
class TrainConfig:
    steps: int
    batch_size: int
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 100
    checkpoint_every: int = 200
    seed: int = 0


@dataclass
class TrainResult:
    params: dict
    step: int
    history: list[dict] = field(default_factory=list)  # {"step", "loss", ...eval metrics} per evaluation
    seconds: float = 0.0


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW on a warm-up + cosine schedule, with global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1),
                                                  max(cfg.steps, cfg.warmup_steps + 1), cfg.learning_rate * 0.01)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(schedule, weight_decay=cfg.weight_decay))


def data_mesh(devices=None) -> Mesh:
    return Mesh(np.array(devices if devices is not None else jax.devices()), ("data",))


def make_step(loss_fn: Callable, tx: optax.GradientTransformation, mesh: Mesh):
    """A jitted step: batch sharded over ``data``, parameters and optimiser state replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec("data"))

    def step(params, opt_state, batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    jitted = jax.jit(step, out_shardings=(replicated, replicated, replicated, replicated))

    def run(params, opt_state, batch):
        batch = {k: jax.device_put(v, sharded) for k, v in batch.items()}
        return jitted(params, opt_state, batch)

    return run


def train(loss_fn: Callable, params, batch_at: Callable[[int], dict], cfg: TrainConfig,
          evaluate: Callable[[dict], dict] | None = None, checkpoint: str | Path | None = None,
          progress: bool = True, devices=None) -> TrainResult:
    """Minimise ``loss_fn(params, batch) -> (loss, aux)`` for ``cfg.steps`` steps.

    ``batch_at(step)`` returns the step's batch (numpy arrays whose first axis is the batch,
    divisible by the device count).  ``evaluate(params)`` returns held-out metrics, shown in the
    progress bar and kept in the history every ``eval_every`` steps and at the end.
    ``checkpoint``: a file to resume from when it exists and to save to.
    """
    from tqdm.auto import tqdm

    mesh = data_mesh(devices)
    if cfg.batch_size % mesh.size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {mesh.size} JAX devices")
    tx = optimizer(cfg)
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.device_put(params, replicated)
    opt_state = tx.init(params)
    start, history = 0, []
    if checkpoint is not None and Path(checkpoint).is_file():
        state = serialization.msgpack_restore(Path(checkpoint).read_bytes())  # history: any length
        params = jax.device_put(serialization.from_state_dict(params, state["params"]), replicated)
        opt_state = jax.device_put(serialization.from_state_dict(opt_state, state["opt_state"]), replicated)
        start, history = int(state["step"]), _history(state.get("history", {}))
    step_fn = make_step(loss_fn, tx, mesh)
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    started, shown, loss = time.perf_counter(), {}, None
    for step in range(start, cfg.steps):
        params, opt_state, loss, aux = step_fn(params, opt_state, batch_at(step))
        done = step + 1
        if evaluate is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            shown = {k: float(v) for k, v in evaluate(params).items()}
            history.append({"step": done, "loss": float(loss), **shown})
        bar.set_postfix({"loss": f"{float(loss):.3f}", **{k: f"{v:.3f}" for k, v in list(shown.items())[:4]}},
                        refresh=False)
        bar.update()
        if checkpoint is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            save_checkpoint(checkpoint, params, opt_state, done, history)
    bar.close()
    return TrainResult(jax.device_get(params), cfg.steps, history, time.perf_counter() - started)


def save_checkpoint(path, params, opt_state, step: int, history: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = serialization.to_bytes({"params": jax.device_get(params), "opt_state": jax.device_get(opt_state),
                                      "step": step, "history": {str(i): h for i, h in enumerate(history)}})
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def _history(state) -> list[dict]:
    if isinstance(state, dict):
        return [dict(state[k]) for k in sorted(state, key=int)]
    return list(state)


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-position cross-entropy and a mask of positions with a label (labels < 0 are ignored)."""
    valid = labels >= 0
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.where(valid, nll, 0.0), valid
