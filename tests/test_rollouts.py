"""On-policy distillation data (DistillSpec): the draft's own rollouts, teacher-forced, mixed into training."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from conftest import tiny_llama
from specdec import drafters
from specdec.heads.llama_flax import LlamaDraft, export_reduced
from specdec.loading import cached_model_dir
from specdec.train.answers import answer, load_answers, prompt_records
from specdec.train.draft import params_from_checkpoint
from specdec.train.loop import save_checkpoint
from specdec.train.packing import PackedTeacher, draft_index, mixed_batch
from specdec.train.rollouts import rollout_records
from specdec.train.teacher import build_teacher, load_teacher
from test_teacher_data import fake_corpus
from test_train_draft import fake_teacher, random_params, reduced_config

SUBSET = 300


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(cached_model_dir("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def target_and_draft(tokenizer, tmp_path_factory):
    target = tiny_llama(vocab_size=len(tokenizer), dtype=torch.float32, max_pos=512, hidden=32)
    config = reduced_config(target, hidden=16, vocab=SUBSET)
    token_ids = np.sort(np.random.default_rng(3).choice(np.arange(3, len(tokenizer)), SUBSET, replace=False))
    folder = tmp_path_factory.mktemp("draft")
    export_reduced(random_params(config, inputs_embeds=jnp.zeros((1, 4, 32))), config, token_ids, folder,
                   dtype="float32")
    return target, drafters.load_draft_model(target, folder), token_ids


def roll(draft, tokenizer, path, seed):
    records = prompt_records(fake_corpus())
    return answer(draft, tokenizer, records, path, max_new_tokens=8, batch_size=2, chunk_size=2, progress=False,
                  temperature=1.0, seed=seed, eos=[2])


def test_rollouts_are_the_drafts_samples_and_reproducible(tokenizer, target_and_draft, tmp_path):
    """Every rolled-out token lies in the draft's vocabulary (the target would leave it); a seed repeats them."""
    _, draft, token_ids = target_and_draft
    stats = roll(draft, tokenizer, tmp_path / "a.jsonl", seed=0)
    a = load_answers(tmp_path / "a.jsonl")
    assert stats["answered"] == len(a) == len(prompt_records(fake_corpus())) and stats["new_tokens"] == 8 * len(a)
    assert all(set(row["ids"]) <= set(token_ids.tolist()) for row in a.values())
    roll(draft, tokenizer, tmp_path / "b.jsonl", seed=0)
    roll(draft, tokenizer, tmp_path / "c.jsonl", seed=1)
    assert load_answers(tmp_path / "b.jsonl") == a and load_answers(tmp_path / "c.jsonl") != a


def test_rollout_records_skip_the_targets_answered_prompts():
    prompts = prompt_records(fake_corpus())
    assert rollout_records(fake_corpus(), 1, None) == prompts[1:]
    assert rollout_records(fake_corpus(), 1, 1) == prompts[1:2]
    with pytest.raises(ValueError, match="skips all"):
        rollout_records(fake_corpus(), len(prompts), None)
    with pytest.raises(ValueError, match="non-negative"):
        rollout_records(fake_corpus(), -1, None)


def test_teacher_over_rollouts_keeps_only_the_rolled_out_records(tokenizer, target_and_draft, tmp_path):
    target, draft, _ = target_and_draft
    records = fake_corpus()
    roll(draft, tokenizer, tmp_path / "r.jsonl", seed=0)
    rolled = load_answers(tmp_path / "r.jsonl")
    summary = build_teacher(target, tokenizer, records, rolled, tmp_path / "t", max_positions=None,
                            shard_positions=60, progress=False, splits=("train",), min_answer=4,
                            only_self_distilled=True)
    data = load_teacher(tmp_path / "t", "train")
    want = [r["id"] for r in records if r["split"] == "train" and not r["has_answer"]]
    assert data["ids"] == want and summary["train"]["self_distilled"] == len(want)
    for i, rid in enumerate(data["ids"]):  # the sequence ends in the rolled-out tokens, each an answer position
        tokens = data["tokens"][data["offsets"][i]: data["offsets"][i + 1]]
        flags = data["answer"][data["offsets"][i]: data["offsets"][i + 1]]
        ids = rolled[rid]["ids"]
        assert tokens[-len(ids):].tolist() == ids and tokens[np.flatnonzero(flags)[-len(ids):] + 1].tolist() == ids
    with pytest.raises(ValueError, match="started with"):  # the option is part of the frozen plan
        build_teacher(target, tokenizer, records, rolled, tmp_path / "t", max_positions=None, shard_positions=60,
                      progress=False, splits=("train",), min_answer=4)


def test_rollout_rows_carry_soft_targets_only():
    subset = np.array([0, 1, 3, 4, 5, 8, 9, 10])
    kw = dict(row_length=16, answers_per_row=8)
    hard = PackedTeacher(fake_teacher(), draft_index(subset, 12), **kw).batch([0])
    soft = PackedTeacher(fake_teacher(), draft_index(subset, 12), hard_labels=False, **kw).batch([0])
    assert (hard["label"][hard["weight"] > 0] >= 0).any() and (soft["label"] == -1).all()
    for key in ("soft_ids", "soft_probs", "argmax", "weight", "at"):
        assert np.array_equal(hard[key], soft[key]), key


def test_mixed_batches_take_rows_of_each_part_reproducibly():
    subset = np.array([0, 1, 3, 4, 5, 8, 9, 10])
    kw = dict(row_length=8, answers_per_row=4)
    teacher = PackedTeacher(fake_teacher(), draft_index(subset, 12), **kw)
    rollouts = PackedTeacher(fake_teacher(), draft_index(subset, 12), hard_labels=False, **kw)
    batch = mixed_batch([(teacher, 3), (rollouts, 1)], seed=0, step=5)
    assert batch["label"].shape == (4, 4) and (batch["label"][3] == -1).all() and (batch["label"][:3] >= 0).any()
    again = mixed_batch([(teacher, 3), (rollouts, 1)], seed=0, step=5)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
    with pytest.raises(ValueError, match="at least one row"):
        mixed_batch([(teacher, 0)], seed=0, step=0)


def test_init_from_a_checkpoint_restores_the_parameters(tmp_path):
    target = tiny_llama(64, seed=0, eos_token_id=None, dtype=torch.float32)
    config = reduced_config(target)
    params = random_params(config, inputs_embeds=jnp.zeros((1, 4, 32)))
    save_checkpoint(tmp_path / "a.ckpt", params, {"anything": np.zeros(2)}, 7, [])
    fresh = random_params(config, seed=5, inputs_embeds=jnp.zeros((1, 4, 32)))
    back = params_from_checkpoint(tmp_path / "a.ckpt", fresh)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    wider = reduced_config(target, hidden=24)
    with pytest.raises(ValueError, match="has shape"):
        params_from_checkpoint(tmp_path / "a.ckpt", LlamaDraft(wider).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), None, None, jnp.zeros((1, 4, 32)))["params"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        params_from_checkpoint(tmp_path / "missing.ckpt", fresh)
