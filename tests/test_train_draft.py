"""The distilled draft: Flax Llama = exported Hugging Face model, export round trip, distillation, exact decoding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

import specdec
from conftest import tiny_llama
from specdec import drafters
from specdec.heads.llama_flax import DraftConfig, LlamaDraft, config_from_hf, export_hf, from_hf_state_dict
from specdec.train.draft import DistillData, fit, init_from_target, teacher_topk
from specdec.train.loop import TrainConfig


def random_params(config, seed=0):
    params = LlamaDraft(config).init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


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
    # round trip: the exported weights read back into the same Flax parameters
    back = from_hf_state_dict(hf.state_dict(), config)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-6
    assert config_from_hf(hf.config) == config


def test_bad_draft_shapes():
    with pytest.raises(ValueError, match="divisible"):
        DraftConfig(vocab_size=10, hidden_size=30, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2)
    with pytest.raises(ValueError, match="key/value heads"):
        DraftConfig(vocab_size=10, hidden_size=32, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=3)


def distill_setup(target, count=12, answer=24):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 64, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (count,), generator=g)]
    out = specdec.generate_pool(target, prompts, None, batch_size=4, schedule="eqspec", max_new_tokens=answer,
                                eos_token_id=[])
    sequences = [s.numpy().astype(np.int32) for s in out.sequences]
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    values, ids, offsets = teacher_topk(target, sequences, lengths, 8)
    return sequences, lengths, values, ids, offsets


def test_distillation_lowers_the_kl_and_drives_exact_decoding(tmp_path):
    target = tiny_llama(64, seed=0, eos_token_id=None)
    sequences, lengths, values, ids, offsets = distill_setup(target)
    assert values.shape == (offsets[-1], 8) and offsets[-1] == sum(len(s) - p for s, p in zip(sequences, lengths))
    data = DistillData(sequences, lengths, values, ids, offsets, 40, 8)
    batch = data.batch([0, 1])
    first, answer = int(lengths[0]) - 1, len(sequences[0]) - int(lengths[0])
    assert batch["at"][0, :answer].tolist() == list(range(first, first + answer))
    assert batch["labels"][0, :answer].tolist() == sequences[0][first + 1:].tolist()
    assert (batch["labels"][0, answer:] == -1).all()
    base = config_from_hf(target.config)
    config = DraftConfig(**{**base.__dict__, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "num_key_value_heads": 1})
    init = init_from_target(LlamaDraft(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"],
                            config, target.state_dict(), target.config.hidden_size)
    cfg = TrainConfig(steps=60, batch_size=4, learning_rate=1e-2, warmup_steps=5, eval_every=30, checkpoint_every=60)
    params, result, evaluate = fit(data, data, config, cfg, 0.5, init, progress=False)
    before, after = evaluate(init), evaluate(params)
    assert after["heldout_kl"] < before["heldout_kl"] - 0.3 and after["heldout_ce"] < before["heldout_ce"]
    folder = export_hf(params, config, tmp_path / "draft", dtype="float32")
    draft = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    for drafter in (drafters.DraftModel(draft, 3), drafters.RecursiveTree(draft, (2, 2))):
        prompt = torch.tensor([sequences[0][: lengths[0]].tolist()])
        got = specdec.generate(target, prompt, drafter, max_new_tokens=20, eos_token_id=[])
        want = target.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert torch.equal(got.sequences, want)


def test_equal_width_draft_starts_as_the_targets_first_layers():
    target = tiny_llama(64, seed=0, eos_token_id=None, dtype=torch.float32)
    base = config_from_hf(target.config)
    config = DraftConfig(**{**base.__dict__, "num_hidden_layers": target.config.num_hidden_layers})
    params = init_from_target(LlamaDraft(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"],
                              config, target.state_dict(), target.config.hidden_size)
    ids = np.arange(3, 15)[None]
    got = np.asarray(LlamaDraft(config).apply({"params": params}, jnp.asarray(ids)))
    with torch.no_grad():
        want = target(torch.tensor(ids)).logits.numpy()
    assert np.abs(got - want).max() < 1e-4  # all layers copied: the draft is the target


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


def test_measure_reports_full_acceptance_for_the_target_as_its_own_draft(tmp_path):
    """The card's measurement: a draft identical to the target accepts every position; another accepts less."""
    from specdec.bench.targets import tiny_target
    from specdec.train.draft import measure

    model, tokenizer = tiny_target(num_layers=1, hidden=16, dtype="float64")
    model.save_pretrained(tmp_path / "self")
    chats = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "tell me more"}]]
    got = measure(model, tokenizer, tmp_path / "self", chats, max_new_tokens=12, num_tokens=3, cost_steps=4)
    assert got["acceptance_by_position"] == [1.0, 1.0, 1.0]
    assert got["mean_accepted_tokens"] > 3.0 and got["cost"]["ratio"] > 0
    other, _ = tiny_target(num_layers=1, hidden=16, seed=1, dtype="float64")
    other.save_pretrained(tmp_path / "other")
    worse = measure(model, tokenizer, tmp_path / "other", chats, max_new_tokens=12, num_tokens=3, cost_steps=4)
    assert worse["mean_accepted_tokens"] < got["mean_accepted_tokens"]
