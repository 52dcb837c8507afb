"""``python -m specdec.train.pipeline ... --plan``: the stages, their sizes and their time on this machine.

Times come from a short measurement here (about half a minute), not from constants:

* answers: the target's prefill per prompt and its batched plain decoding step (``generate_pool``) at the
  pipeline's batch, on prompts of the corpus when it exists;
* teacher: seconds per token of the target's bf16 body and per answer position of its float32 head
  (:func:`~specdec.train.teacher.teacher_forward`), times the tokens the corpus needs per answer position;
* train: the multiply-adds of one training step, counted from the drafter's and the target's shapes,
  over the floating-point rate JAX reaches here on a matrix product with its gradient.

A stage already complete is shown as such, with the seconds it took when the pipeline ran it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

ANSWER_SHARE = 0.5  # answer positions per corpus token before the corpus card says otherwise


def decoding_times(model, prompts: list[list[int]], batch_size: int, steps: int = 8) -> tuple[float, float]:
    """Seconds of prefill per prompt and per batched decoding step (plain ``generate_pool``, best of two)."""
    import specdec

    def run(new_tokens: int) -> float:
        started = time.perf_counter()
        specdec.generate_pool(model, prompts, None, batch_size=batch_size, max_new_tokens=new_tokens, eos_token_id=[])
        return time.perf_counter() - started

    with torch.inference_mode():
        run(2)  # warm-up
        short = min(run(1) for _ in range(2))
        long = min(run(1 + steps) for _ in range(2))
    batches = -(-len(prompts) // batch_size)
    return short / len(prompts), max(long - short, 1e-6) / (steps * batches)


def teacher_rates(model, length: int = 512) -> tuple[float, float]:
    """Seconds per token of the bf16 body and per answer position of the float32 head (best of two)."""
    from .teacher import teacher_forward

    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, length).astype(np.int32)
    none, every = np.zeros(length, bool), np.ones(length, bool)

    def run(answer) -> float:
        started = time.perf_counter()
        teacher_forward(model, tokens, answer, 32, body_dtype="bfloat16")
        return time.perf_counter() - started

    with torch.inference_mode():
        teacher_forward(model, tokens[:64], every[:64], 32, body_dtype="bfloat16")  # warm-up
        body = min(run(none) for _ in range(2))
        both = min(run(every) for _ in range(2))
    return body / length, max(both - body, 0.0) / length


def jax_flops() -> float:
    """Floating-point operations per second of a jitted matrix product and its gradient (all JAX devices)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((2048, 512), jnp.float32)
    w = jnp.ones((512, 2048), jnp.float32)
    grad = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w)), argnums=(0, 1)))
    jax.block_until_ready(grad(w, x))
    started, runs = time.perf_counter(), 5
    for _ in range(runs):
        jax.block_until_ready(grad(w, x))
    return runs * 3 * 2 * 2048 * 512 * 2048 / (time.perf_counter() - started)


def step_macs(trainer: str, config, train_cfg: DictConfig, vocab: int, batch_size: int) -> float:
    """Multiply-adds of one training step's forward: the drafter's matrices times the rows they see."""
    h = config.hidden_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    if trainer == "medusa":
        return batch_size * int(train_cfg.num_heads) * (h * h + h * vocab)
    if trainer == "chimera":
        layer = 2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * config.intermediate_size
        per_token = layer + 12 * h * h  # the layer and the trigram encoder (3H x 3H residual, 3H -> H)
        drafted = batch_size * int(train_cfg.answers_per_row) * int(train_cfg.depths)
        return batch_size * int(train_cfg.row_length) * per_token + drafted * (per_token + 2 * h * vocab)
    m = train_cfg.model  # the distilled draft: a small Llama over the target's embeddings
    d, layers = int(m.hidden_size), int(m.num_hidden_layers)
    d_head = d // int(m.num_attention_heads)
    layer = 2 * d * d + 2 * d * int(m.num_key_value_heads) * d_head + 3 * d * int(m.intermediate_size)
    tokens = batch_size * int(train_cfg.row_length)
    return tokens * (layers * layer + h * d) + batch_size * int(train_cfg.answers_per_row) * d * vocab


def with_overrides(config: DictConfig, overrides) -> DictConfig:
    """``config`` with a stage's ``key=value`` overrides applied (``+`` adds; ``~`` deletions are ignored)."""
    pairs = [o.lstrip("+") for o in overrides if "=" in o and not o.startswith("~")]
    return OmegaConf.merge(config, OmegaConf.from_dotlist(pairs)) if pairs else config


def estimate(cfg: DictConfig) -> dict:
    """Seconds per stage from a short measurement (and the measured rates they came from)."""
    from hydra.utils import instantiate

    from specdec.chat import encode_chat

    from .pipeline import DRAFTERS, _config_dir

    s = cfg.sizes
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    started = time.perf_counter()
    model, tokenizer = instantiate(cfg.target.load)
    load = time.perf_counter() - started
    corpus = Path(cfg.corpus or Path(cfg.work_dir) / "corpus" / "corpus.jsonl")
    chats = []
    if corpus.is_file():
        with open(corpus, encoding="utf-8") as f:
            chats = [r["messages"] for r in map(json.loads, f) if not r["has_answer"]][:int(s.answer_batch)]
    if not chats:
        chats = [[{"role": "user", "content": "Summarise the history of rivers and canals in Europe. " * 8}]]
    prompts = [encode_chat(tokenizer, c)[0, :512].tolist() for c in chats]
    prompts = (prompts * int(s.answer_batch))[: int(s.answer_batch)]
    prefill, batch_step = decoding_times(model, prompts, int(s.answer_batch))
    _, single_step = decoding_times(model, prompts[:1], 1, steps=24)
    prompts_per_pass = 6 * int(cfg.bench.per_category)  # six benchmark categories
    body, head = teacher_rates(model)
    share = ANSWER_SHARE
    card = Path(cfg.work_dir) / "corpus" / "card.json"
    if card.is_file():
        c = json.loads(card.read_text())
        share = min(max(c["estimated_positions"] / max(c["tokens"], 1), 0.05), 1.0)
    positions = int(s.positions) + int(s.valid_positions)
    trainer = DRAFTERS[cfg.drafter_kind]
    train_cfg = with_overrides(OmegaConf.load(_config_dir() / "train" / f"{trainer}.yaml"), cfg.overrides.train)
    batch = int(s.batch_size or train_cfg.optim.batch_size)
    flops = jax_flops()
    step = 6 * step_macs(trainer, model.config, train_cfg, int(s.vocab_size), batch) / flops  # forward + backward
    return {
        "seconds": {"answers": load + int(s.prompts) * (prefill + int(s.answer_tokens) * batch_step
                                                        / int(s.answer_batch)),
                    "teacher": load + positions * (body / share + head),
                    "train": 60 + int(s.steps) * step,  # + start-up, compilation and the card's measurements
                    "bench": load + 2 * prompts_per_pass * (int(cfg.bench.repeats) * int(cfg.bench.max_new_tokens) + 8)
                    * single_step + 2 * prompts_per_pass * (int(cfg.bench.repeats) + 1) * prefill},
                    # plain and drafted, at most plain's time each
        "rates": {"prefill_s_per_prompt": round(prefill, 3),
                  "answer_tokens_per_s": round(int(s.answer_batch) / batch_step, 1),
                  "tokens_per_s_batch1": round(1 / single_step, 1), "teacher_body_ms_per_token": round(body * 1e3, 3),
                  "teacher_head_ms_per_position": round(head * 1e3, 3), "answer_share": round(share, 3),
                  "jax_gflops": round(flops / 1e9, 1), "train_step_s": round(step, 2), "load_s": round(load, 1)},
    }


def _clock(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if minutes < 2 else f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def print_plan(cfg: DictConfig, stages: list) -> None:
    """The stages in order: size, state, estimated time; then the rates behind the estimates."""
    from .pipeline import DRAFTERS, ran_stages

    state_path = ran_stages(cfg)
    ran = json.loads(state_path.read_text()) if state_path.is_file() else {}
    print(f"Plan: {DRAFTERS[cfg.drafter_kind]} for {cfg.target.name} in {cfg.work_dir} "
          f"({torch.get_num_threads()} torch threads); measuring this machine ...", flush=True)
    guess = estimate(cfg)
    total = 0.0
    for i, stage in enumerate(stages, 1):
        if stage.done():
            took = ran.get(stage.name, {}).get("seconds")
            state = "complete" + (f" (took {_clock(took)})" if took else "")
        elif stage.name == "corpus":
            state = "to run: about 2 min (tokenising and checking every source)"
            total += 120
        else:
            seconds = guess["seconds"][stage.name]
            total += seconds
            state = f"to run: about {_clock(seconds)}"
        print(f"  {i}. {stage.name:<8} {stage.size:<48} {state}")
    print(f"  left to run: about {_clock(total)}")
    print("  measured: " + ", ".join(f"{k} {v}" for k, v in guess["rates"].items()))
