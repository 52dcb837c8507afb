"""`python -m specdec.bench.tree_choice`: candidate trees are parsed strictly, measured with the default policy
against plain decoding in one run with their outputs checked, and the default's speed is written into the card."""
import json

import numpy as np
import pytest
import torch
from conftest import tiny_llama
from test_chimera import random_draft

from specdec import drafters
from specdec.bench.tree_choice import candidates_for, fastest, measure, parse_sizes, parse_trees, tree_options, write_choice


def test_trees_are_parsed_strictly():
    assert parse_trees("1:1, 2:3,4:8") == [(1, 1), (2, 3), (4, 8)]
    for bad, message in (("2", "DEPTH:NODES"), ("a:b", "DEPTH:NODES"), ("3:2", "impossible"), ("0:0", "impossible"),
                         ("1:1,1:1", "repeat")):
        with pytest.raises(ValueError, match=message):
            parse_trees(bad)
    assert tree_options(2, 3) == {"depth": 2, "branch": 3, "width": 3, "max_nodes": 3}
    assert tree_options(4, 8)["branch"] == 4


def test_measures_every_tree_against_plain_decoding_and_writes_the_defaults_speed(tmp_path):
    target = tiny_llama(64, seed=0, dtype=torch.float32)
    draft = random_draft(target, np.arange(0, 64, 3), dtype=torch.float32)
    prompts = [torch.randint(3, 64, (1, 6), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    candidates = {"1:1": (drafters.Chimera(draft, **tree_options(1, 1)), 1),
                  "2:3": (drafters.Chimera(draft, **tree_options(2, 3)), 2)}
    rows = measure(target, prompts, candidates, max_new_tokens=5, repeats=1)
    assert [r["tree"] for r in rows] == ["plain", "1:1", "2:3"]
    assert rows[0]["tokens_per_step"] == 1.0 and rows[0]["speed_vs_plain"] == 1.0
    assert all(r["tokens_per_step"] >= 1.0 and r["tokens_per_second"] > 0 for r in rows)
    (tmp_path / "card.json").write_text(json.dumps({"kind": "chimera", "tree": {"depth": 9}, "tree_choice": "old"}))
    made_up = [{"tree": "plain", "tokens_per_second": 50.0}, {"tree": "goodput", "tokens_per_second": 60.0},
               {"tree": "1:1", "tokens_per_second": 20.0}, {"tree": "2:3", "tokens_per_second": 30.0}]
    for row in made_up:
        row.update(tokens_per_step=1.0, speed_vs_plain=row["tokens_per_second"] / 50.0)
    assert fastest(made_up) == "2:3"  # neither plain decoding nor the default is a fixed tree
    assert write_choice(tmp_path, made_up, "cmd") == 1.2
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["measured"]["speed_over_plain"] == 1.2 and "fastest fixed: 2:3" in card["measured"]["tree_choice"]
    assert card["tree"] == {"depth": 9} and "tree_choice" not in card  # the largest tree is not touched


def test_a_drafter_that_changes_the_output_stops_the_run(monkeypatch):
    """A candidate decoded by another model stands in for a broken drafter: the run must refuse it."""
    import specdec

    target, other = tiny_llama(64, seed=0, dtype=torch.float32), tiny_llama(64, seed=5, dtype=torch.float32)
    broken = drafters.Chimera(random_draft(target, np.arange(0, 64, 3), dtype=torch.float32), **tree_options(1, 1))
    prompts = [torch.randint(3, 64, (1, 6), generator=torch.Generator().manual_seed(1))]
    real_generate = specdec.generate
    monkeypatch.setattr(specdec, "generate", lambda model, ids, drafter, **kw: real_generate(
        other if drafter is broken else model, ids, drafter, **kw))
    with pytest.raises(RuntimeError, match="changed the greedy output"):
        measure(target, prompts, {"1:1": (broken, 1)}, max_new_tokens=6, repeats=1)


def test_medusa_budgets_and_chain_lengths_are_candidates_too(tmp_path):
    from test_medusa import random_heads, write_artifact

    assert parse_sizes("1, 2,4") == [1, 2, 4]
    for bad in ("0", "a", "1,1", "2:3"):
        with pytest.raises(ValueError, match="whole number|repeat"):
            parse_sizes(bad)
    target = tiny_llama(64, seed=0, dtype=torch.float64)
    card = {"kind": "medusa", "tree": [[0]], "top_k_accuracy": [[0.6, 0.2], [0.4, 0.1], [0.3]]}
    write_artifact(tmp_path / "m", random_heads(target.config.hidden_size, 3, seed=7), card)
    made = candidates_for(card, tmp_path / "m", target, parse_sizes("1,3"))
    assert list(made) == ["goodput", "1 nodes", "3 nodes"]
    assert [len(m.tree) for m, _ in made.values()] == [1, 1, 3] and made["goodput"][1] is None
    assert [k for _, k in list(made.values())[1:]] == [1, 2]  # fixed at each tree's own depth
    with pytest.raises(ValueError, match="not a Chimera, Medusa or distilled-draft"):
        candidates_for({"kind": "lora"}, tmp_path, target, [1])
