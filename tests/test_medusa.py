"""Medusa heads: the sparse-tree builder, lossless decoding with random heads, the artifact format."""
import itertools
import json

import pytest
import torch
from safetensors.torch import save_file

import specdec
from exact_randomness import enumerate_law
from specdec import drafters
from specdec.heads.medusa import MedusaHeads
from specdec.medusa_tree import build_sparse_tree, expected_accepted
from test_batch import PAD, VOCAB, expected_batch, prompts, row_reference, target  # noqa: F401  (fixture)
from test_sampling_lossless import PROMPT, exact_law, generated, models

TREE = [(0,), (1,), (0, 0), (2,), (0, 1), (1, 0), (0, 0, 0)]


def random_heads(hidden: int, count: int, seed: int, scale: float = 1.0, dtype=torch.float64) -> MedusaHeads:
    heads = MedusaHeads(hidden, count)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in heads.blocks:
            block.linear.weight.copy_(torch.randn(hidden, hidden, generator=g) * scale / hidden ** 0.5)
            block.linear.bias.copy_(torch.randn(hidden, generator=g) * scale)
    return heads.to(dtype)


# ---- the tree builder ----------------------------------------------------------------------------
def best_by_brute_force(accuracies, max_nodes):
    nodes = [p for d in range(1, len(accuracies) + 1) for p in itertools.product(*[range(len(a)) for a in accuracies[:d]])]
    best = 0.0
    for subset in itertools.combinations(nodes, max_nodes):
        chosen = set(subset)
        if all(len(p) == 1 or p[:-1] in chosen for p in subset):
            best = max(best, expected_accepted(list(subset), accuracies))
    return best


@pytest.mark.parametrize("accuracies", [
    [[0.6, 0.2, 0.1], [0.5, 0.2], [0.4]],
    [[0.3, 0.29], [0.9, 0.05], [0.8, 0.1]],   # a weak first head with strong later ones
    [[0.5, 0.6], [0.2, 0.3]],                 # ranks not sorted by accuracy
])
@pytest.mark.parametrize("max_nodes", [1, 3, 5])
def test_sparse_tree_is_the_best_for_its_budget(accuracies, max_nodes):
    tree = build_sparse_tree(accuracies, max_nodes)
    assert len(tree) == max_nodes and len(set(tree)) == max_nodes
    assert all(len(p) == 1 or p[:-1] in tree[:i] for i, p in enumerate(tree))  # parents first
    assert expected_accepted(tree, accuracies) == pytest.approx(best_by_brute_force(accuracies, max_nodes))


def test_sparse_tree_arguments():
    assert build_sparse_tree([[0.5], [0.5]], 10) == [(0,), (0, 0)]  # fewer nodes exist than the budget
    with pytest.raises(ValueError, match="max_nodes"):
        build_sparse_tree([[0.5]], 0)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        build_sparse_tree([[1.5]], 2)


# ---- decoding with Medusa ------------------------------------------------------------------------
def test_zero_initialised_heads_guess_the_targets_next_token(target):
    """At initialisation every block is the identity, so each head's logits are the target's own."""
    heads = MedusaHeads(target.config.hidden_size, 3).to(torch.float64)
    hidden = torch.randn(2, target.config.hidden_size, dtype=torch.float64)
    logits = heads(hidden, target.get_output_embeddings())
    for k in range(3):
        assert torch.equal(logits[k], target.get_output_embeddings()(hidden))


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_greedy_matches_generate(target, batch):
    rows = prompts(batch, seed=40 + batch)  # lengths 1..40: a one-token prompt has no prefill hidden state
    ids, mask, expected = expected_batch(target, rows, 20, None, PAD)
    drafter = drafters.Medusa(random_heads(target.config.hidden_size, 3, seed=1), TREE)
    out = specdec.generate(target, ids, drafter, attention_mask=mask, max_new_tokens=20, eos_token_id=[],
                           pad_token_id=PAD)
    assert torch.equal(out.sequences, expected)
    assert out.stats.drafted_tokens > 0


def test_greedy_with_eos_and_the_pool(target):
    rows = prompts(8, seed=3)
    eos = row_reference(target, rows[1], 24, None)[4]
    drafter = drafters.Medusa(random_heads(target.config.hidden_size, 3, seed=2), TREE)
    for policy in ("exspec", "eqspec"):
        out = specdec.generate_pool(target, rows, drafter, batch_size=3, schedule=policy, max_new_tokens=24,
                                    eos_token_id=eos)
        for row, seq in zip(rows, out.sequences):
            assert seq.tolist() == row + row_reference(target, row, 24, eos)


@pytest.mark.parametrize("config", [specdec.SamplingConfig(do_sample=True),
                                    specdec.SamplingConfig(do_sample=True, temperature=0.7, top_k=3)])
def test_sampling_is_exact(config):
    """Every outcome enumerated: deterministic tree children verified by recursive rejection keep the law."""
    model, _ = models()
    expected = exact_law(model, 3, config)
    drafter = drafters.Medusa(random_heads(model.config.hidden_size, 2, seed=5, scale=3.0), [(0,), (1,), (0, 0), (1, 0)])
    kwargs = dict(max_new_tokens=3, do_sample=True, temperature=config.temperature, top_k=config.top_k,
                  eos_token_id=[])
    law = enumerate_law(lambda rng: generated(specdec.generate(model, PROMPT, drafter, randomness=rng, **kwargs)))
    assert abs(sum(law.values()) - 1) < 1e-9
    for seq, prob in expected.items():
        assert abs(law.get(seq, 0.0) - prob) < 1e-9, (seq, law.get(seq), prob)


# ---- the artifact --------------------------------------------------------------------------------
def write_artifact(folder, heads, card):
    folder.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in heads.tensors().items()}, str(folder / "medusa.safetensors"))
    (folder / "card.json").write_text(json.dumps(card))


def test_from_pretrained_round_trip(tmp_path, target):
    heads = random_heads(target.config.hidden_size, 3, seed=7)
    card = {"tree": [list(p) for p in TREE], "top_k_accuracy": [[0.6, 0.2], [0.4, 0.1], [0.3]]}
    write_artifact(tmp_path / "m", heads, card)
    loaded = drafters.Medusa.from_pretrained(tmp_path / "m", target)
    assert loaded.tree == TREE
    for a, b in zip(loaded.heads.tensors().values(), heads.tensors().values()):
        assert torch.equal(a, b)
    rebuilt = drafters.Medusa.from_pretrained(tmp_path / "m", target, max_nodes=4)
    assert rebuilt.tree == build_sparse_tree(card["top_k_accuracy"], 4)


def test_artifact_errors(tmp_path, target):
    with pytest.raises(FileNotFoundError, match="medusa.safetensors"):
        drafters.Medusa.from_pretrained(tmp_path, target)
    write_artifact(tmp_path / "wide", random_heads(target.config.hidden_size + 8, 2, seed=1), {"tree": [[0]]})
    with pytest.raises(ValueError, match="hidden size"):
        drafters.Medusa.from_pretrained(tmp_path / "wide", target)
    heads = random_heads(target.config.hidden_size, 2, seed=1)
    with pytest.raises(ValueError, match="before its parent"):
        drafters.Medusa(heads, [(0, 0), (0,)])
    with pytest.raises(ValueError, match="deeper"):
        drafters.Medusa(heads, [(0,), (0, 0), (0, 0, 0)])


def test_typical_acceptance_is_opt_in_and_lossy():
    """Typical acceptance accepts more and its law differs from the target's (it says LOSSY)."""
    model, _ = models()
    config = specdec.SamplingConfig(do_sample=True)
    expected = exact_law(model, 3, config)
    drafter = drafters.Medusa(random_heads(model.config.hidden_size, 2, seed=5, scale=3.0), [(0,), (1,), (0, 0), (1, 0)])
    kwargs = dict(max_new_tokens=3, do_sample=True, eos_token_id=[])
    law = enumerate_law(lambda rng: generated(specdec.generate(model, PROMPT, drafter, randomness=rng,
                                                               typical_acceptance=(0.3, 0.6), **kwargs)))
    assert abs(sum(law.values()) - 1) < 1e-9
    assert max(abs(law.get(s, 0.0) - p) for s, p in expected.items()) > 1e-3
    with pytest.raises(ValueError, match="typical_acceptance"):
        specdec.generate(model, PROMPT, drafter, typical_acceptance=(2.0, 0.1), **kwargs)


class OracleHeads(MedusaHeads):
    """Heads that know the reference continuation: from the target's state at token t, head j
    names token t + 2 + j.  Fed any other slot's state they guess wrong, so full acceptance
    proves the engine hands Medusa the state before each row's root."""

    def __init__(self, hidden_states: torch.Tensor, tokens: list[int], vocab: int, num_heads: int):
        super().__init__(hidden_states.shape[-1], num_heads)
        self.states, self.tokens, self.vocab = hidden_states, tokens, vocab

    def forward(self, hidden, lm_head):
        out = torch.full((self.num_heads, hidden.shape[0], self.vocab), -1e9, dtype=hidden.dtype)
        for row, h in enumerate(hidden):
            t = int((self.states - h).abs().amax(dim=-1).argmin())
            for j in range(self.num_heads):
                if t + 2 + j < len(self.tokens):
                    out[j, row, self.tokens[t + 2 + j]] = 0.0
        return out


@pytest.mark.parametrize("batch", [1, 3])
def test_heads_reading_the_right_slot_accept_everything(target, batch):
    """Heads that predict the known future from the state before the root get every draft accepted."""
    rows = prompts(4, seed=13)[1:1 + batch]  # prompts of 2, 5 and 11 tokens: the prefill has a state
    ids, mask, expected = expected_batch(target, rows, 24, None, PAD)
    heads = []
    for r, row in enumerate(rows):
        tokens = row + expected[r, ids.shape[1]:].tolist()
        with torch.no_grad():
            states = target.get_decoder()(torch.tensor([tokens])).last_hidden_state[0]
        heads.append(OracleHeads(states, tokens, VOCAB, 3))

    class PerRow(MedusaHeads):  # row r's oracle for row r
        def __init__(self):
            super().__init__(heads[0].hidden_size, 3)

        def forward(self, hidden, lm_head):
            return torch.cat([h(hidden[r:r + 1], lm_head) for r, h in enumerate(heads)], dim=1)

    drafter = drafters.Medusa(PerRow(), [(0,), (0, 0), (0, 0, 0)])
    out = specdec.generate(target, ids, drafter, attention_mask=mask, max_new_tokens=24, eos_token_id=[],
                           pad_token_id=PAD)
    assert torch.equal(out.sequences, expected)
    # every step, the first (with the prefill's state) included, accepts its 3 drafts and a bonus token
    assert dict(out.stats.accepted_histogram) == {3: 6 * batch} and out.stats.steps == 6
