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
from specdec.train.loop import TrainConfig
from specdec.train.medusa import export, fit, make_batch, medusa_arrays
from specdec.train.packing import draft_index


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
    """Medusa data a residual head can learn: label_k = argmax of a fixed projection; no soft targets."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, hidden)).astype(np.float32)
    lm = rng.normal(size=(vocab, hidden)).astype(np.float32)
    labels = np.full((n, heads), -1, dtype=np.int32)
    for k in range(heads):
        w = rng.normal(size=(hidden, hidden)).astype(np.float32)
        labels[:, k] = np.argmax((h + np.tanh(h @ w)) @ lm.T, axis=1)
    data = {"hidden": h.astype(np.float16), "labels": labels, "rows": np.full((n, heads), -1, np.int64),
            "topk_ids": np.zeros((1, 4), np.int32), "topk_logprobs": np.zeros((1, 4), np.float16)}
    return data, lm


def split(data, a, b):
    return {**data, **{k: data[k][a:b] for k in ("hidden", "labels", "rows")}}


def run_fit(data, valid, lm, cfg, checkpoint=None, progress=False, devices=None):
    return fit(data, valid, lm, np.arange(len(lm), dtype=np.int32), 2, 0.5, 0.8, cfg, checkpoint, progress, devices)


def tiny_cfg(**kw):
    return TrainConfig(**{**dict(steps=60, batch_size=32, learning_rate=3e-2, warmup_steps=5, eval_every=20,
                                 checkpoint_every=20), **kw})


def test_training_raises_held_out_accuracy():
    data, lm = synthetic(600)
    params, result, evaluate = run_fit(split(data, 0, 500), split(data, 500, 600), lm, tiny_cfg())
    zero = MedusaHeadsFlax(16, 2).init(jax.random.PRNGKey(0), jnp.zeros((1, 16)))["params"]
    before, after = evaluate(zero, detailed=True)["heads"], evaluate(params, detailed=True)["heads"]
    for b, a in zip(before, after):
        assert a["top1"] > b["top1"] + 0.1 and a["top5"] >= b["top5"]
    assert [e["step"] for e in result.history] == [20, 40, 60]
    assert sum(after[0]["rank_accuracy"]) <= 1.0 + 1e-6 and after[0]["rank_accuracy"][0] == after[0]["top1"]


@pytest.mark.slow
def test_resume_gives_the_same_parameters(tmp_path):
    data, lm = synthetic(300)
    cfg = tiny_cfg(steps=12, checkpoint_every=6)
    straight, _, _ = run_fit(data, split(data, 0, 50), lm, cfg)
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
            run_fit(data, split(data, 0, 50), lm, cfg, ckpt)
    finally:
        medusa_train.train = original
    assert ckpt.is_file()
    resumed, result, _ = run_fit(data, split(data, 0, 50), lm, cfg, ckpt)
    for name in straight:
        for key in straight[name]:
            np.testing.assert_allclose(np.asarray(resumed[name][key]), np.asarray(straight[name][key]), atol=1e-6)


@pytest.mark.slow
def test_sharded_and_single_device_steps_agree():
    """With two forced host devices, the data-parallel run and a one-device run reach the same parameters."""
    script = textwrap.dedent("""
        import json, numpy as np, jax
        from test_train_medusa import run_fit, split, synthetic, tiny_cfg
        assert jax.device_count() == 2, jax.devices()
        data, lm = synthetic(200)
        cfg = tiny_cfg(steps=5)
        two, _, _ = run_fit(data, split(data, 0, 40), lm, cfg)
        one, _, _ = run_fit(data, split(data, 0, 40), lm, cfg, devices=jax.devices()[:1])
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


def teacher_shards(tmp_path, target):
    from test_teacher_data import fake_answers, fake_corpus
    from transformers import AutoTokenizer

    from specdec.loading import cached_model_dir
    from specdec.train.teacher import build_teacher

    tokenizer = AutoTokenizer.from_pretrained(cached_model_dir("smollm2-135m-instruct"))
    records = fake_corpus()
    build_teacher(target, tokenizer, records, fake_answers(records, len(tokenizer)), tmp_path / "t",
                  max_positions=None, shard_positions=200, progress=False)
    return tmp_path / "t", tokenizer


def test_head_labels_are_the_following_answer_tokens(tmp_path):
    """Head k at answer position t: token t+1+k when it is an answer token of the same sequence, with its law."""
    from specdec.train.packing import load_arrays

    target = tiny_llama(vocab_size=49152, dtype=torch.float32, max_pos=512)
    folder, _ = teacher_shards(tmp_path, target)
    data = medusa_arrays(folder, "train", 2)
    flat = load_arrays(folder, "train", keys=("tokens", "answer", "topk_ids", "topk_logprobs"))
    positions = np.flatnonzero(flat["answer"])
    assert len(data["hidden"]) == len(positions)
    rank = np.cumsum(flat["answer"]) - 1
    ends = flat["offsets"][np.searchsorted(flat["offsets"], positions, side="right")]
    for i, (t, end) in enumerate(zip(positions, ends)):
        for k in (1, 2):
            q = t + k
            if q + 1 < end and flat["answer"][q]:
                assert data["labels"][i, k - 1] == flat["tokens"][q + 1] and data["rows"][i, k - 1] == rank[q]
            else:
                assert data["labels"][i, k - 1] == -1 and data["rows"][i, k - 1] == -1
    assert (data["labels"] >= 0).any() and (data["labels"] < 0).any()
    batch = make_batch(data, draft_index(np.arange(49152), 49152), np.arange(8))
    assert np.allclose(batch["soft_probs"].sum(-1)[batch["has_soft"] > 0], 1.0, atol=1e-5)


def test_pipeline_on_a_tiny_target(tmp_path):
    """Teacher shards -> reduced-vocabulary heads -> export -> Medusa.from_pretrained -> exact greedy decoding."""
    model = tiny_llama(vocab_size=49152, dtype=torch.float32, max_pos=512, hidden=32)
    folder, tokenizer = teacher_shards(tmp_path, model)
    counts = np.load(folder / "token_counts.npy")
    token_ids = np.sort(np.argsort(-counts)[:512])
    train_data, valid_data = medusa_arrays(folder, "train", 2), medusa_arrays(folder, "valid", 2)
    lm = model.get_output_embeddings().weight.detach().float().numpy()[token_ids]
    params, result, evaluate = fit(train_data, valid_data, lm, draft_index(token_ids, 49152), 2, 0.5, 0.8,
                                   tiny_cfg(steps=40, batch_size=16), progress=False)
    heads = evaluate(params, detailed=True)["heads"]
    from specdec.medusa_tree import build_sparse_tree

    card = {"tree": [list(p) for p in build_sparse_tree([x["rank_accuracy"] for x in heads], 6)],
            "top_k_accuracy": [x["rank_accuracy"] for x in heads]}
    export(params, token_ids, tmp_path / "artifact", card)
    drafter = drafters.Medusa.from_pretrained(tmp_path / "artifact", model)
    assert len(drafter.tree) == 6 and drafter.token_ids.tolist() == token_ids.tolist()
    ids = torch.tensor([tokenizer("the quick brown fox jumps")["input_ids"]])
    got = specdec.generate(model, ids, drafter, max_new_tokens=30, eos_token_id=[])
    want = model.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(got.sequences, want)
    other = tiny_llama(vocab_size=300, dtype=torch.float32, hidden=32)
    with pytest.raises(ValueError, match="another model"):
        drafters.Medusa.from_pretrained(tmp_path / "artifact", other)
