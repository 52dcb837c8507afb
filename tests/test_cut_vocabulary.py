"""Cutting a draft-v2 head to its most frequent tokens keeps those rows exactly and stays exact in decoding."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import specdec
from conftest import tiny_llama
from specdec import drafters
from specdec.heads.llama_flax import export_reduced
from specdec.train import cut_vocabulary
from test_train_draft import random_params, reduced_config


def _artifact(tmp_path, target):
    config = reduced_config(target)
    token_ids = np.sort(np.random.default_rng(1).choice(np.arange(3, 64), 20, replace=False))
    token_ids[0] = 2  # EOS is in the head
    params = random_params(config, inputs_embeds=jnp.zeros((1, 4, 32)))
    folder = tmp_path / "d"
    export_reduced(params, config, token_ids, folder, dtype="float32")
    (folder / "card.json").write_text(json.dumps({"kind": "specdec-draft-v2", "config": {"eos_token_id": 2},
                                                  "vocabulary": {"size": 20}, "command": "train"}))
    return folder, token_ids


def test_cut_keeps_the_most_frequent_rows_and_eos(tmp_path):
    target = tiny_llama(64, seed=0, eos_token_id=None, dtype=torch.float32)
    folder, token_ids = _artifact(tmp_path, target)
    before = drafters.load_draft_model(target, folder).get_output_embeddings()
    counts = np.zeros(64)
    counts[token_ids] = np.arange(20, 0, -1) * 10.0  # ids in the head: the lowest ids counted most
    counts[2] = 0.0  # EOS never counted, kept all the same
    counts[1] = 1000.0  # a frequent token outside the head cannot come in
    np.save(tmp_path / "counts.npy", counts)
    cut_vocabulary.main([str(folder), "--size", "6", "--counts", str(tmp_path / "counts.npy"), "--no-measure"])
    after = drafters.load_draft_model(target, folder).get_output_embeddings()
    expected = sorted([2] + token_ids[1:6].tolist())
    assert after.token_ids.tolist() == expected
    rows = [token_ids.tolist().index(t) for t in expected]
    assert torch.equal(after.weight, before.weight[rows])
    card = json.loads((folder / "card.json").read_text())
    assert card["vocabulary"]["size"] == 6 and card["vocabulary"]["cut_from"] == 20
    assert "cut_vocabulary" in card["stages"][-1]["command"]
    prompt = torch.tensor([[5, 9, 3, 7]])
    want = target.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    draft = drafters.load_draft_model(target, folder)
    assert torch.equal(specdec.generate(target, prompt, drafters.DraftModel(draft, 3), max_new_tokens=12,
                                        eos_token_id=[]).sequences, want)


def test_impossible_cuts_are_refused(tmp_path):
    target = tiny_llama(64, seed=0, eos_token_id=None, dtype=torch.float32)
    folder, _ = _artifact(tmp_path, target)
    np.save(tmp_path / "counts.npy", np.ones(64))
    for size in (0, 20, 50):
        with pytest.raises(ValueError, match="--size"):
            cut_vocabulary.main([str(folder), "--size", str(size), "--counts", str(tmp_path / "counts.npy"),
                                 "--no-measure"])
    np.save(tmp_path / "short.npy", np.ones(10))
    with pytest.raises(ValueError, match="counts cover 10 tokens"):
        cut_vocabulary.main([str(folder), "--size", "5", "--counts", str(tmp_path / "short.npy"), "--no-measure"])
    with pytest.raises(FileNotFoundError, match="not a draft-v2 artifact"):
        cut_vocabulary.main([str(tmp_path / "nothing"), "--size", "5"])


def test_sweep_measures_each_size_and_is_recorded_with_the_cut(tmp_path, monkeypatch):
    from specdec.bench.targets import tiny_target

    target, tokenizer = tiny_target(num_layers=1, hidden=16, dtype="float32")
    monkeypatch.setattr(specdec, "load_model", lambda spec: (target, tokenizer))
    vocab = target.config.vocab_size
    config = reduced_config(target, hidden=16, vocab=64)
    token_ids = np.arange(64)
    folder = tmp_path / "d"
    export_reduced(random_params(config, inputs_embeds=jnp.zeros((1, 4, target.config.hidden_size))), config,
                   token_ids, folder, dtype="float32")
    (folder / "card.json").write_text(json.dumps({"kind": "specdec-draft-v2", "target": "tiny",
                                                  "config": {"eos_token_id": None}, "measured": {"chain": 2}}))
    counts = np.zeros(vocab)
    counts[:64] = np.arange(64, 0, -1)
    np.save(tmp_path / "counts.npy", counts)
    cut_vocabulary.main([str(folder), "--sweep", "64,16", "--size", "16", "--per-category", "1",
                         "--counts", str(tmp_path / "counts.npy"), "--no-measure"])
    card = json.loads((folder / "card.json").read_text())
    measured = card["vocabulary"]["cut_sweep"]
    assert measured["chain"] == 2 and set(measured["sizes"]) == {"64", "16"}
    small, full = measured["sizes"]["16"], measured["sizes"]["64"]
    assert small["train_coverage"] < full["train_coverage"] == 1.0
    assert all(row["cost_ratio"] > 0 and row["mean_accepted_tokens"] >= 1.0 for row in (small, full))
    assert card["vocabulary"]["size"] == 16
