"""The Medusa training stack: torch/Flax parity, the JAX loop (loss falls, sharding, resume), the pipeline."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import specdec
from conftest import tiny_llama
from specdec import drafters
from specdec.heads.medusa import MedusaHeads
from specdec.heads.medusa_flax import MedusaHeadsFlax, from_tensors, logits as flax_logits, to_tensors
from specdec.train.features import extract, load_split, sequence_features
from specdec.train.loop import TrainConfig
from specdec.train.medusa import export, fit


def random_torch_heads(hidden, count, seed):
    heads = MedusaHeads(hidden, count)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return heads


def test_torch_and_flax_heads_agree_through_safetensors(tmp_path):
    hidden, vocab = 24, 40
    heads = random_torch_heads(hidden, 3, seed=0)
    save_file({k: v.contiguous() for k, v in heads.tensors().items()}, str(tmp_path / "h.safetensors"))
    params = from_tensors(load_file(str(tmp_path / "h.safetensors")))
    lm_head = torch.nn.Linear(hidden, vocab, bias=False)
    x = torch.randn(5, hidden)
    expected = heads(x, lm_head).detach().numpy()
    got = np.asarray(flax_logits(MedusaHeadsFlax(hidden, 3), params, jnp.asarray(x.numpy()),
                                 jnp.asarray(lm_head.weight.detach().numpy())))
    assert np.abs(got - expected).max() < 1e-5
    # and back: Flax parameters -> the torch module
    back = MedusaHeads.from_tensors({k: torch.from_numpy(v) for k, v in to_tensors(params).items()})
    assert all(torch.equal(a, b) for a, b in zip(back.tensors().values(), heads.tensors().values()))


def synthetic(n, hidden=16, vocab=32, heads=2, seed=0):
    """Hidden states and labels a residual head can learn: label_k = argmax of a fixed projection."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, hidden)).astype(np.float32)
    lm = rng.normal(size=(vocab, hidden)).astype(np.float32)
    labels = np.full((n, 1 + heads), -1, dtype=np.int32)
    for k in range(1 + heads):
        w = rng.normal(size=(hidden, hidden)).astype(np.float32)
        labels[:, k] = np.argmax((h + np.tanh(h @ w)) @ lm.T, axis=1)
    return h, labels, lm


def tiny_cfg(**kw):
    return TrainConfig(**{**dict(steps=60, batch_size=32, learning_rate=3e-2, warmup_steps=5, eval_every=20,
                                 checkpoint_every=20), **kw})


def test_training_lowers_the_loss():
    h, labels, lm = synthetic(600)
    params, result, evaluate = fit(h[:500], labels[:500], h[500:], labels[500:], lm, 2, 0.8, tiny_cfg(),
                                   progress=False)
    zero = MedusaHeadsFlax(16, 2).init(jax.random.PRNGKey(0), jnp.zeros((1, 16)))["params"]
    before, after = evaluate(zero, detailed=True)["heads"], evaluate(params, detailed=True)["heads"]
    for b, a in zip(before, after):
        assert a["loss"] < b["loss"] - 0.2 and a["top1"] > b["top1"]
    assert [e["step"] for e in result.history] == [20, 40, 60]
    assert sum(after[0]["rank_accuracy"]) <= 1.0 + 1e-6 and after[0]["rank_accuracy"][0] == after[0]["top1"]


def test_resume_gives_the_same_parameters(tmp_path):
    h, labels, lm = synthetic(300)
    straight, _, _ = fit(h, labels, h[:50], labels[:50], lm, 2, 0.8, tiny_cfg(steps=12, checkpoint_every=6),
                         progress=False)
    ckpt = tmp_path / "run.ckpt"
    import specdec.train.medusa as medusa_train

    original = medusa_train.train

    def stop_at_6(loss_fn, params, batch_at, cfg, *args, **kwargs):
        def guarded(step):
            if step >= 6:
                raise KeyboardInterrupt
            return batch_at(step)
        return original(loss_fn, params, guarded, cfg, *args, **kwargs)

    medusa_train.train = stop_at_6
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(h, labels, h[:50], labels[:50], lm, 2, 0.8, tiny_cfg(steps=12, checkpoint_every=6), ckpt, False)
    finally:
        medusa_train.train = original
    assert ckpt.is_file()
    resumed, result, _ = fit(h, labels, h[:50], labels[:50], lm, 2, 0.8, tiny_cfg(steps=12, checkpoint_every=6),
                             ckpt, False)
    for name in straight:
        for key in straight[name]:
            np.testing.assert_allclose(np.asarray(resumed[name][key]), np.asarray(straight[name][key]), atol=1e-6)


def test_sharded_and_single_device_steps_agree():
    """With two forced host devices, the data-parallel run and a one-device run reach the same parameters."""
    script = textwrap.dedent("""
        import json, numpy as np, jax
        from test_train_medusa import synthetic, tiny_cfg
        from specdec.train.medusa import fit
        assert jax.device_count() == 2, jax.devices()
        h, labels, lm = synthetic(200)
        cfg = tiny_cfg(steps=5)
        two, _, _ = fit(h, labels, h[:40], labels[:40], lm, 2, 0.8, cfg, progress=False)
        one, _, _ = fit(h, labels, h[:40], labels[:40], lm, 2, 0.8, cfg, progress=False, devices=jax.devices()[:1])
        diff = max(float(np.abs(np.asarray(two[n][k]) - np.asarray(one[n][k])).max()) for n in two for k in two[n])
        moved = max(float(np.abs(np.asarray(two[n][k])).max()) for n in two for k in two[n])
        print(json.dumps({"diff": diff, "moved": moved}))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["moved"] > 1e-3 and result["diff"] < 1e-5


def test_feature_labels_are_the_following_tokens():
    model = tiny_llama(64, seed=0)
    ids = np.array([5, 9, 11, 3, 7, 8, 20], dtype=np.int32)
    hidden, labels = sequence_features(model, ids, prompt_length=3, num_heads=2)
    assert hidden.shape == (4, model.config.hidden_size)  # positions 2..5 predict answer tokens 3..6
    assert labels.tolist() == [[3, 7, 8], [7, 8, 20], [8, 20, -1], [20, -1, -1]]
    with torch.no_grad():
        full = model.get_decoder()(input_ids=torch.tensor(ids[None].astype(np.int64))).last_hidden_state[0, 2:6]
    assert np.abs(hidden - full.float().numpy()).max() < 1e-6


def test_pipeline_on_a_tiny_target(tmp_path):
    """Distilled tokens -> features -> training -> export -> Medusa.from_pretrained -> exact greedy decoding."""
    model = tiny_llama(64, seed=0, eos_token_id=None)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 64, (n,), generator=g).tolist() for n in (5, 9, 4, 12, 7, 6)]
    out = specdec.generate_pool(model, prompts, None, batch_size=3, schedule="eqspec", max_new_tokens=40, eos_token_id=[])
    sequences = [s.numpy().astype(np.int32) for s in out.sequences]
    counts = extract(model, sequences, [len(p) for p in prompts], 2, tmp_path / "features", 0.34, 64)
    assert counts["train"]["sequences"] == 4 and counts["valid"]["sequences"] == 2
    h, labels = load_split(tmp_path / "features", "train")
    vh, vlabels = load_split(tmp_path / "features", "valid")
    lm = model.get_output_embeddings().weight.detach().float().numpy()
    params, result, evaluate = fit(h, labels, vh, vlabels, lm, 2, 0.8, tiny_cfg(steps=40, batch_size=16),
                                   progress=False)
    heads = evaluate(params, detailed=True)["heads"]
    from specdec.medusa_tree import build_sparse_tree

    card = {"tree": [list(p) for p in build_sparse_tree([x["rank_accuracy"] for x in heads], 6)],
            "top_k_accuracy": [x["rank_accuracy"] for x in heads]}
    export(params, tmp_path / "artifact", card)
    drafter = drafters.Medusa.from_pretrained(tmp_path / "artifact", model)
    assert len(drafter.tree) == 6
    ids = torch.tensor([prompts[0]])
    got = specdec.generate(model, ids, drafter, max_new_tokens=30, eos_token_id=[])
    want = model.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(got.sequences, want)
    assert got.stats.mean_accepted_tokens > 1.0  # heads trained on the model's own answers are accepted


def test_training_corpus_is_our_own_and_stable():
    from specdec.bench.prompts import load_prompts
    from specdec.train.corpus import training_prompts

    corpus = training_prompts(300)
    texts = [c[0]["content"] for c in corpus]
    assert len(set(texts)) == 300 and training_prompts(120) == corpus[:120]  # a prefix: later prompts stay unseen
    bench = {m["content"] for p in load_prompts(per_category=None) for m in p.messages}
    assert not bench & set(texts)
    with pytest.raises(ValueError, match="corpus holds"):
        training_prompts(10_000)
