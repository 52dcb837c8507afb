"""The target's lean forward (plain Llamas) computes what its own Hugging Face forward computes.

A ragged batch is prefilled, verifies a tree, commits paths of different lengths (a realignment)
and verifies again, once through LeanLlama (fused and unfused) and once through the model's own
forward: hidden states agree to float64 rounding at every step, and so do the caches' lengths.
"""
import pytest
import torch
from conftest import tiny_llama

from specdec.target import verifier as target_module
from specdec.target.verifier import Target
from specdec.tree import DraftTree

VOCAB = 64


def _run(model, lean: bool) -> list[torch.Tensor]:
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[2, :1] = 0
    target = Target(model, lean=lean)
    assert (target.lean is not None) == lean
    roots, prefill_hidden = target.prefill(ids, mask)
    outputs = [prefill_hidden * mask[:, :-1, None]]  # padding columns hold garbage
    tree = DraftTree(torch.tensor([[11, 12, 21], [13, 14, 22], [15, 16, 23]]), torch.tensor([-1, -1, 0]))
    outputs.append(target.verify(roots, tree).hidden)
    target.commit([[0, 2], [], [1]], tree.num_nodes)  # rows keep 2, 0 and 1 nodes: realigned
    chain = DraftTree.chain(torch.tensor([[30, 31], [32, 33], [34, 35]]))
    outputs.append(target.verify(torch.tensor([40, 41, 42]), chain).hidden)
    outputs.append(target.lengths.double())
    return outputs


@pytest.mark.parametrize("fuse_bytes", [1 << 30, 0])  # 0: unfused, the model's own weights
def test_lean_target_equals_hugging_face_forward(monkeypatch, fuse_bytes):
    monkeypatch.setattr(target_module, "FUSE_BYTES", fuse_bytes)
    model = tiny_llama(VOCAB, seed=1)
    model.__dict__.pop("_specdec_lean", None)
    lean = _run(model, lean=True)
    fused = Target(model).lean.layers[0]["qkv"]
    assert len(fused) == (1 if fuse_bytes else 3)
    reference = _run(model, lean=False)
    for ours, theirs in zip(lean, reference):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    assert not torch.equal(reference[1], torch.zeros_like(reference[1]))


def test_other_families_keep_their_own_forward():
    assert Target(tiny_llama(VOCAB, attention_bias=True)).lean is None
    assert Target(tiny_llama(VOCAB), lean=False).lean is None
    assert Target(tiny_llama(VOCAB)).lean is not None


def test_rows_taken_and_joined_keep_the_settings():
    model = tiny_llama(VOCAB, seed=2)
    target = Target(model, few_rows=False, lean=False)
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    target.prefill(ids, torch.ones_like(ids))
    part = target.take_rows(torch.tensor([1]))
    joined = part.join([target.take_rows(torch.tensor([0]))])
    for t in (part, joined):
        assert t.lean is None and not t.few_rows
    assert joined.cache.batch_size == 2 and target.cache.batch_size == 2
