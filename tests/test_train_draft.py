"""The distilled draft: Flax Llama = exported model, the reduced-vocabulary draft-v2 layout, packing, distillation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

import specdec
from conftest import tiny_llama
from specdec import drafters
from specdec.heads.llama_flax import DraftConfig, LlamaDraft, config_from_hf, export_hf, export_reduced, from_hf_state_dict
from specdec.train.draft import init_params, make_evaluate, make_loss
from specdec.train.loop import TrainConfig, train
from specdec.train.packing import PackedTeacher, draft_index, load_arrays


def random_params(config, seed=0, **inputs):
    params = LlamaDraft(config).init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32), **inputs)["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.slow
@pytest.mark.parametrize("tie", [True, False])
def test_flax_draft_equals_the_exported_hf_model(tmp_path, tie):
    config = DraftConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    params = random_params(config)
    ids = np.random.default_rng(0).integers(0, 50, (2, 11))
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    flax_logits = np.asarray(LlamaDraft(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    export_hf(params, config, tmp_path, dtype="float32")
    hf = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        positions = torch.tensor(np.clip(mask.cumsum(-1) - 1, 0, None))
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=positions).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(flax_logits[real] - ref[real]).max() < 1e-4
    at = np.array([[0, 5, 10], [3, 4, 9]])
    picked = np.asarray(LlamaDraft(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(at)))
    assert np.abs(picked - np.take_along_axis(flax_logits, at[..., None], 1)).max() < 1e-5
    back = from_hf_state_dict(hf.state_dict(), config)  # round trip
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-6
    assert config_from_hf(hf.config) == config


def reduced_config(target, hidden=16, vocab=20):
    return DraftConfig(vocab_size=target.config.vocab_size, hidden_size=hidden, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                       embed_dim=target.config.hidden_size, draft_vocab_size=vocab)


def test_reduced_draft_export_loads_as_the_same_model(tmp_path):
    """A draft-v2 artifact (projected target embeddings, subset head) gives the Flax logits on its tokens, -inf elsewhere."""
    target = tiny_llama(64, seed=0, eos_token_id=None, dtype=torch.float32)
    config = reduced_config(target)
    embeddings = target.get_input_embeddings().weight.detach().numpy()
    token_ids = np.sort(np.random.default_rng(1).choice(64, 20, replace=False))
    params = random_params(config, inputs_embeds=jnp.zeros((1, 4, 32)))
    ids = np.random.default_rng(2).integers(0, 64, (1, 9))
    flax = np.asarray(LlamaDraft(config).apply({"params": params}, jnp.asarray(ids), None, None,
                                               jnp.asarray(embeddings[ids])))
    export_reduced(params, config, token_ids, tmp_path / "d", dtype="float32")
    draft = drafters.load_draft_model(target, tmp_path / "d")
    with torch.no_grad():
        logits = draft(torch.tensor(ids)).logits[0].numpy()
    assert np.abs(logits[:, token_ids] - flax[0]).max() < 1e-4
    outside = np.setdiff1d(np.arange(64), token_ids)
    assert np.isneginf(logits[:, outside]).all()
    # greedy speculative decoding with it stays exact, and HF's assisted generation accepts it as a draft
    prompt = torch.tensor([[5, 9, 3, 7]])
    want = target.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(specdec.generate(target, prompt, drafters.DraftModel(draft, 3), max_new_tokens=16,
                                        eos_token_id=[]).sequences, want)
    assert torch.equal(target.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0,
                                       assistant_model=draft), want)


def test_a_draft_for_another_target_is_refused(tmp_path):
    target = tiny_llama(64, seed=0, eos_token_id=None, dtype=torch.float32)
    config = reduced_config(target)
    export_reduced(random_params(config, inputs_embeds=jnp.zeros((1, 4, 32))), config, np.arange(20), tmp_path / "d")
    wider = tiny_llama(64, seed=0, eos_token_id=None, hidden=48, heads=4, kv_heads=2)
    with pytest.raises(ValueError, match="hidden size 32"):
        drafters.load_draft_model(wider, tmp_path / "d")
    other_vocab = tiny_llama(80, seed=0, eos_token_id=None)
    with pytest.raises(ValueError, match="vocabulary 64"):
        drafters.load_draft_model(other_vocab, tmp_path / "d")
    (tmp_path / "d" / "draft.safetensors").write_bytes(b"")
    with pytest.raises(Exception):
        drafters.load_draft_model(target, tmp_path / "d")


@pytest.mark.slow
def test_packed_segments_do_not_see_each_other():
    """Two sequences packed in one row give the logits each gives alone."""
    config = DraftConfig(vocab_size=30, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    params = random_params(config)
    module = LlamaDraft(config)
    a, b = np.arange(3, 10), np.arange(12, 17)
    row = np.concatenate([a, b])[None]
    positions = np.concatenate([np.arange(7), np.arange(5)])[None]
    segments = np.array([[1] * 7 + [2] * 5])
    packed = np.asarray(module.apply({"params": params}, jnp.asarray(row), None, None, None, jnp.asarray(positions),
                                     jnp.asarray(segments)))[0]
    alone_a = np.asarray(module.apply({"params": params}, jnp.asarray(a[None])))[0]
    alone_b = np.asarray(module.apply({"params": params}, jnp.asarray(b[None])))[0]
    assert np.abs(packed[:7] - alone_a).max() < 1e-5 and np.abs(packed[7:] - alone_b).max() < 1e-5


def fake_teacher():
    """Teacher arrays for two sequences over a 12-token vocabulary, top-3 laws at the answer positions."""
    tokens = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], np.int32)
    answer = np.array([0, 1, 1, 1, 0, 0, 1, 1, 1, 0], bool)  # next tokens 3, 4, 5 and 8, 9, 10 are answers
    topk_ids = np.array([[3, 0, 11], [4, 11, 1], [5, 2, 0], [8, 1, 11], [11, 9, 2], [10, 9, 1]], np.int32)
    topk_logprobs = np.log(np.array([[0.6, 0.3, 0.1]] * 6, np.float32)).astype(np.float16)
    return {"tokens": tokens, "answer": answer, "topk_ids": topk_ids, "topk_logprobs": topk_logprobs,
            "offsets": np.array([0, 5, 10]), "answer_offsets": np.array([0, 3, 6]), "categories": ["a", "b"]}


def test_packed_batches_carry_the_targets_law_over_the_draft_vocabulary():
    subset = np.array([0, 1, 3, 4, 5, 8, 9, 10])  # 2 and 11 are outside the draft vocabulary
    data = PackedTeacher(fake_teacher(), draft_index(subset, 12), row_length=16, answers_per_row=8)
    assert len(data) == 1 and data.answer_positions == 6
    batch = data.batch([0])
    assert batch["segment_ids"][0].tolist() == [1] * 5 + [2] * 5 + [0] * 6
    assert batch["positions"][0, :10].tolist() == list(range(5)) * 2
    assert (batch["weight"][0] == 1).sum() == 6
    index = draft_index(subset, 12)
    for j in range(6):
        label = batch["label"][0, j]
        position = batch["at"][0, j]
        assert label == index[batch["input_ids"][0, position + 1]]
        probs = batch["soft_probs"][0, j]
        assert abs(probs.sum() - 1) < 1e-6 and all(p == 0 or batch["soft_ids"][0, j, i] >= 0 for i, p in enumerate(probs))
    # the one position whose target argmax (11) is outside the vocabulary: argmax -1, its mass left on 9 alone
    where = [j for j in range(6) if batch["argmax"][0, j] == -1]
    assert len(where) == 1
    j = where[0]
    assert batch["soft_probs"][0, j].tolist() == [0.0, 1.0, 0.0] and batch["soft_ids"][0, j, 1] == index[9]


@pytest.mark.slow
def test_distillation_on_teacher_shards_lowers_the_loss_and_decodes_exactly(tmp_path):
    """Teacher shards from a tiny target: training the reduced draft lowers the held-out loss, raises top-1,
    and the exported draft drives exact greedy decoding."""
    from test_teacher_data import fake_answers, fake_corpus  # noqa: F401
    from transformers import AutoTokenizer

    from specdec.loading import cached_model_dir
    from specdec.train.teacher import build_teacher

    tokenizer = AutoTokenizer.from_pretrained(cached_model_dir("smollm2-135m-instruct"))
    target = tiny_llama(vocab_size=len(tokenizer), dtype=torch.float32, max_pos=512, hidden=32)
    records = fake_corpus()
    build_teacher(target, tokenizer, records, fake_answers(records, len(tokenizer)), tmp_path / "t",
                  max_positions=None, shard_positions=200, progress=False)
    counts = np.load(tmp_path / "t" / "token_counts.npy")
    token_ids = np.sort(np.argsort(-counts)[:256])
    to_draft = draft_index(token_ids, len(counts))
    embeddings = target.get_input_embeddings().weight.detach().numpy()
    train_data = PackedTeacher(load_arrays(tmp_path / "t", "train"), to_draft, 256, 128, embeddings=embeddings)
    config = reduced_config(target, hidden=32, vocab=len(token_ids))
    module = LlamaDraft(config)
    cfg = TrainConfig(steps=60, batch_size=2, learning_rate=1e-2, warmup_steps=5, eval_every=60, checkpoint_every=60)
    params = init_params(module, config, embeddings, token_ids, 0)
    loss_fn = make_loss(module, 0.3)
    evaluate = make_evaluate(loss_fn, train_data, 2, 4)
    before = evaluate(params)
    result = train(loss_fn, params, lambda s: train_data.batch([s % len(train_data), (s + 1) % len(train_data)]),
                   cfg, evaluate, progress=False)
    after = evaluate(result.params)
    assert after["heldout_loss"] < before["heldout_loss"] - 0.5 and after["heldout_top1"] > before["heldout_top1"]
    export_reduced(result.params, config, token_ids, tmp_path / "draft", dtype="float32")
    draft = drafters.load_draft_model(target, tmp_path / "draft")
    prompt = torch.tensor([train_data.batch([0])["input_ids"][0, :12].tolist()])
    want = target.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = specdec.generate(target, prompt, drafters.DraftModel(draft, 3), max_new_tokens=12, eos_token_id=[])
    assert torch.equal(got.sequences, want)


def test_bad_draft_shapes():
    with pytest.raises(ValueError, match="divisible"):
        DraftConfig(vocab_size=10, hidden_size=30, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2)
    with pytest.raises(ValueError, match="key/value heads"):
        DraftConfig(vocab_size=10, hidden_size=32, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=3)


def test_load_draft_model(tmp_path):
    target = tiny_llama(64, seed=0, eos_token_id=None)
    config = DraftConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    export_hf(random_params(config), config, tmp_path / "d", dtype="bfloat16")
    draft = drafters.load_draft_model(target, tmp_path / "d")
    assert draft.dtype == torch.float64 and draft.config.hidden_size == 16  # cast to the target's dtype
    assert drafters.load_draft_model(target, None, self_draft_layers=1).config.num_hidden_layers == 1
    with pytest.raises(FileNotFoundError, match="not found"):
        drafters.load_draft_model(target, tmp_path / "missing")
    wrong = DraftConfig(vocab_size=65, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1)
    export_hf(random_params(wrong), wrong, tmp_path / "w", dtype="float32")
    with pytest.raises(ValueError, match="vocabularies differ"):
        drafters.load_draft_model(target, tmp_path / "w")


def test_acceptance_by_position_from_depth_and_accepted_counts():
    """alpha_i: of the steps that proposed position i and accepted up to i-1, the share accepting i."""
    from specdec.stats import acceptance_by_position

    assert acceptance_by_position({(3, 0): 2, (3, 1): 1, (3, 3): 1}) == [2 / 4, 1 / 2, 1.0]
    # a step that drafted only one token (near the budget) does not count against position 2
    assert acceptance_by_position({(2, 2): 1, (1, 1): 3}) == [1.0, 1.0]
    assert acceptance_by_position({(0, 0): 5}) == []
    assert acceptance_by_position({(8, 1): 3, (8, 0): 1}) == [3 / 4, 0.0]  # nothing reached position 3
    with pytest.raises(ValueError, match="accepted <= depth"):
        acceptance_by_position({(1, 2): 2})


def test_card_measurement_gives_full_acceptance_for_the_target_as_its_own_draft():
    """The card's acceptance: a draft identical to the target accepts every position; another accepts less."""
    from specdec.bench.targets import tiny_target
    from specdec.train.measure import acceptance, relative_cost

    model, tokenizer = tiny_target(num_layers=1, hidden=16, dtype="float64")
    got = acceptance(model, tokenizer, lambda: drafters.DraftModel(model, 3), per_category=1, max_new_tokens=12)
    assert got["acceptance_by_position"] == [1.0, 1.0, 1.0] and got["mean_accepted_tokens"] > 3.0
    assert set(got["per_category"]) >= {"math", "rag", "translation"}
    other, _ = tiny_target(num_layers=1, hidden=16, seed=1, dtype="float64")
    worse = acceptance(model, tokenizer, lambda: drafters.DraftModel(other, 3), per_category=1, max_new_tokens=12)
    assert worse["mean_accepted_tokens"] < got["mean_accepted_tokens"]
    assert relative_cost(model, tokenizer, lambda: drafters.DraftModel(other, 3), max_new_tokens=8, repeats=1)["ratio"] > 0


def test_cost_and_coverage_by_vocabulary_size():
    """The card's table of draft vocabulary sizes: coverage grows with the size, costs are measured in the engine."""
    from specdec.bench.targets import tiny_target
    from specdec.train.packing import draft_index
    from specdec.train.vocabulary import Setup, cost_by_size

    model, tokenizer = tiny_target(num_layers=1, hidden=16, dtype="float32")
    vocab = model.config.vocab_size
    counts = np.arange(vocab, dtype=np.int64)[::-1].copy()
    run = Setup(model, tokenizer, None, counts, np.arange(64), draft_index(np.arange(64), vocab))
    config = reduced_config(model, hidden=16, vocab=64)
    table = cost_by_size(run, config, sizes=(32, 128))
    assert set(table) == {"32", "128"} and table["32"]["coverage"] < table["128"]["coverage"] <= 1.0
    assert all(row["ratio"] > 0 and row["draft_ms_per_token"] > 0 for row in table.values())
