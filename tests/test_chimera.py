"""Chimera: torch = Flax, greedy equivalence in batches and pools, the exact sampled law, the tree budget, loading."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import tiny_llama
from exact_randomness import enumerate_law
from specdec.heads.chimera import ChimeraConfig, ChimeraDraft
from specdec.heads.chimera_flax import ChimeraFlax, from_tensors, to_tensors
from test_batch import PAD, expected_batch, prompts, target  # noqa: F401  (fixture)
from test_sampling_lossless import PROMPT, exact_law, generated, models

import specdec
from specdec import drafters


def random_draft(model, vocab_ids, seed=0, scale=0.3, dtype=torch.float64, state_input=False) -> ChimeraDraft:
    config = ChimeraConfig.from_target(model.config, len(vocab_ids), state_input=state_input)
    draft = ChimeraDraft(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale / max(p.shape[-1], 1) ** 0.5 + (1.0 if "norm" in name else 0.0))
    draft = draft.to(dtype)
    return draft.bind(model.get_input_embeddings().weight, torch.as_tensor(vocab_ids))


def torch_logits(draft: ChimeraDraft, tokens: list[int], hidden: torch.Tensor, u: int, d: int) -> torch.Tensor:
    """The draft's logits for token u+1 after d draft steps from the root u-d+1, run as the drafter runs them."""
    t = u - d + 1
    positions = lambda lo, hi: torch.arange(lo, hi)[None]  # noqa: E731
    keys, values = draft.context_key_values(hidden[None, :t], positions(0, t))
    trig = [[tokens[max(j - 2, 0)], tokens[max(j - 1, 0)], tokens[j]] for j in range(t, u + 1)]
    enc = draft.encode(torch.tensor([trig]))
    k2, v2 = draft.layer.key_values(enc, positions(t, u + 1))
    keys, values = torch.cat([keys, k2], 2), torch.cat([values, v2], 2)
    visible = torch.ones(1, 1, keys.shape[2], dtype=torch.bool)
    s = draft.draft_states(enc[:, -1:], positions(u, u + 1), keys, values, visible, last_state=hidden[None, t - 1])
    return draft.logits(draft.verified_logits(hidden[None, t - 1]), s)[0, 0]


@pytest.mark.parametrize("state_input", [False, True])
def test_torch_and_flax_agree_through_the_safetensors_layout(state_input):
    model = tiny_llama(64, seed=0, dtype=torch.float32)
    vocab_ids = np.arange(0, 64, 2)
    draft = random_draft(model, vocab_ids, dtype=torch.float32, state_input=state_input)
    tensors = {k: v.detach() for k, v in draft.state_dict().items()}
    params = from_tensors(tensors)
    back = to_tensors(params)
    assert set(back) == set(tensors) and all(np.array_equal(back[k], tensors[k].numpy()) for k in back)
    tokens = [5, 9, 3, 7, 1, 30, 2, 11, 4, 8]
    with torch.no_grad():
        hidden = model.get_decoder()(torch.tensor([tokens])).last_hidden_state[0]
    embeds = model.get_input_embeddings().weight.detach().numpy()[tokens][None]
    idx = np.arange(len(tokens))
    prev1, prev2 = np.maximum(idx - 1, 0)[None], np.maximum(idx - 2, 0)[None]
    at = np.array([[4, 7, 9]])
    logits, valid = ChimeraFlax(draft.config).apply(
        {"params": params}, jnp.asarray(embeds), jnp.asarray(prev1), jnp.asarray(prev2), jnp.asarray(hidden.numpy()[None]),
        jnp.asarray(idx[None]), jnp.ones((1, len(tokens)), jnp.int32), jnp.asarray(at), 3)
    logits = np.asarray(logits)
    assert np.asarray(valid).all()
    with torch.no_grad():
        for j, u in enumerate(at[0]):
            for d in (1, 2, 3):
                want = torch_logits(draft, tokens, hidden, int(u), d).numpy()
                assert np.abs(logits[0, d - 1, j] - want).max() < 1e-5


@pytest.fixture(scope="module")
def chimera_for(target):
    return lambda seed=1, state_input=False, **kw: drafters.Chimera(
        random_draft(target, np.arange(0, 64, 3), seed=seed, state_input=state_input), **kw)


@pytest.mark.parametrize("batch,eos,state_input", [(1, False, False), (3, False, False), (3, True, False),
                                                   (1, False, True), (3, True, True)])
def test_greedy_matches_generate(target, chimera_for, batch, eos, state_input):
    rows = prompts(batch, seed=17)
    eos_id = expected_batch(target, rows, 20, None, PAD)[2][-1, -8].item() if eos else None
    ids, mask, expected = expected_batch(target, rows, 20, eos_id, PAD)
    out = specdec.generate(target, ids, chimera_for(state_input=state_input), attention_mask=mask, max_new_tokens=20,
                           eos_token_id=eos_id if eos else [], pad_token_id=PAD)
    assert torch.equal(out.sequences, expected)
    pool = specdec.generate_pool(target, rows, chimera_for(state_input=state_input), batch_size=2, max_new_tokens=20,
                                 eos_token_id=eos_id if eos else [])
    for r, seq in enumerate(pool.sequences):
        tail = expected[r, ids.shape[1]:].tolist()
        assert seq.tolist() == rows[r] + tail[:len(seq) - len(rows[r])]


def test_trees_respect_the_node_budget_and_depth(target):
    """Every proposed tree holds at most max_nodes nodes, at most depth deep, siblings distinct."""
    draft = random_draft(target, np.arange(64))
    chimera = drafters.Chimera(draft, depth=3, branch=3, width=2, max_nodes=5)
    ids = torch.tensor([prompts(1, seed=3)[0]])
    trees = []
    original = chimera.propose

    def spy(request):
        tree = original(request)
        trees.append(tree)
        return tree
    chimera.propose = spy
    specdec.generate(target, ids, chimera, max_new_tokens=16, eos_token_id=[])
    assert trees and all(t.num_nodes <= 5 and t.max_depth <= 3 for t in trees)
    for tree in trees:  # parents before children, siblings distinct
        for kids in tree.children[0]:
            assert len(set(tree.tokens[0, kids].tolist())) == len(kids)


@pytest.mark.parametrize("state_input", [False, True])
def test_sampled_output_law_is_exact(state_input):
    """Six tokens, every coin and draw enumerated: Chimera's point-mass trees keep the target's law."""
    model, _ = models()
    draft = random_draft(model, np.arange(6), seed=4, scale=2.0, state_input=state_input)
    config = specdec.SamplingConfig(do_sample=True)
    expected = exact_law(model, 2, config)
    law = enumerate_law(lambda rng: generated(specdec.generate(
        model, PROMPT, drafters.Chimera(draft, depth=2, branch=2, width=2, max_nodes=4), max_new_tokens=2,
        do_sample=True, eos_token_id=[], randomness=rng)))
    assert abs(sum(law.values()) - 1) < 1e-9
    assert max(abs(law[s] - expected[s]) for s in expected) < 1e-9


def test_loading_checks_the_target(tmp_path, target):
    from safetensors.torch import save_file

    draft = random_draft(target, np.arange(0, 64, 2))
    folder = tmp_path / "c"
    folder.mkdir()
    tensors = {k: v.float().contiguous() for k, v in draft.state_dict().items()}
    tensors["vocab.token_ids"] = torch.arange(0, 64, 2)
    save_file(tensors, str(folder / "chimera.safetensors"))
    (folder / "card.json").write_text(json.dumps({"config": draft.config.as_dict(),
                                                  "tree": {"depth": 2, "branch": 2, "width": 2, "max_nodes": 4}}))
    loaded = drafters.Chimera.from_pretrained(folder, target)
    assert loaded.max_depth == 2 and loaded.num_nodes == 4
    with pytest.raises(ValueError, match="hidden size 32"):
        drafters.Chimera.from_pretrained(folder, tiny_llama(64, hidden=48, heads=4, kv_heads=2))
    with pytest.raises(ValueError, match="vocabulary 64"):
        drafters.Chimera.from_pretrained(folder, tiny_llama(80))
    with pytest.raises(FileNotFoundError, match="lacks"):
        drafters.Chimera.from_pretrained(tmp_path, target)
    # a draft in its own precision (float16 here, the target float64) proposes; the output stays the target's
    half = drafters.Chimera.from_pretrained(folder, target, dtype="float16")
    assert half.draft.head.weight.dtype == torch.float16
    ids = torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(4))
    ref = target.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    out = specdec.generate(target, ids, half, attention_mask=torch.ones_like(ids), max_new_tokens=12, eos_token_id=[])
    assert torch.equal(out.sequences, ref)
    with pytest.raises(ValueError, match="unknown floating-point dtype"):
        drafters.Chimera.from_pretrained(folder, target, dtype="int8")


@pytest.mark.slow
def test_training_on_teacher_shards_lowers_the_loss_and_decodes_exactly(tmp_path):
    """Teacher shards of a tiny target: Chimera's held-out loss falls, top-1 rises, and decoding stays exact."""
    from specdec.train.chimera import export, init_params, make_evaluate, make_loss
    from specdec.train.loop import TrainConfig, train
    from specdec.train.packing import BASE_KEYS, PackedTeacher, draft_index, load_arrays
    from specdec.train.teacher import build_teacher
    from test_teacher_data import fake_answers, fake_corpus
    from transformers import AutoTokenizer

    from specdec.loading import cached_model_dir

    tokenizer = AutoTokenizer.from_pretrained(cached_model_dir("smollm2-135m-instruct"))
    model = tiny_llama(vocab_size=len(tokenizer), dtype=torch.float32, max_pos=512, hidden=32)
    records = fake_corpus()
    build_teacher(model, tokenizer, records, fake_answers(records, len(tokenizer)), tmp_path / "t",
                  max_positions=None, shard_positions=200, progress=False)
    counts = np.load(tmp_path / "t" / "token_counts.npy")
    token_ids = np.sort(np.argsort(-counts)[:256])
    embeddings = model.get_input_embeddings().weight.detach().numpy()
    rows = model.get_output_embeddings().weight.detach().numpy()[token_ids]
    data = PackedTeacher(load_arrays(tmp_path / "t", "train", BASE_KEYS + ("hidden",)), draft_index(token_ids, len(counts)),
                         256, 64, embeddings=embeddings)
    config = ChimeraConfig.from_target(model.config, len(token_ids), state_input=True)
    module = ChimeraFlax(config)
    params = init_params(module, config, rows, 0, 2)
    loss_fn = make_loss(module, 2, 0.3, 0.8)
    evaluate = make_evaluate(loss_fn, data, 2, 4)
    before = evaluate(params)
    cfg = TrainConfig(steps=40, batch_size=2, learning_rate=1e-2, warmup_steps=5, eval_every=40, checkpoint_every=40)
    result = train(loss_fn, params, lambda s: data.batch([s % len(data), (s + 1) % len(data)]), cfg, evaluate,
                   progress=False)
    after = evaluate(result.params)
    assert after["heldout_loss"] < before["heldout_loss"] - 1.0
    assert after["top1_d1"] > before["top1_d1"] and after["top1_d2"] > before["top1_d2"]
    export(result.params, config, token_ids, tmp_path / "c", {"tree": {"depth": 3, "branch": 2, "width": 2, "max_nodes": 6}})
    drafter = drafters.Chimera.from_pretrained(tmp_path / "c", model)
    prompt = torch.tensor([data.batch([0])["input_ids"][0, :16].tolist()])
    want = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(specdec.generate(model, prompt, drafter, max_new_tokens=12, eos_token_id=[]).sequences, want)
