"""Test drafters whose behaviour is scripted, so that acceptance is known in advance."""
from __future__ import annotations

import torch

from specdec.drafters import Drafter
from specdec.tree import DraftTree


class ScriptedDrafter(Drafter):
    """Proposes the reference continuation, right for the first ``right`` tokens, wrong after."""

    stateless = True

    def __init__(self, reference: torch.Tensor, vocab_size: int, right: int, num_tokens: int):
        self.reference = reference[0].tolist()
        self.vocab_size = vocab_size
        self.right = right
        self.num_tokens = num_tokens

    def propose(self, request):
        start = int(request.lengths[0])  # index in the reference of the token after the root
        tokens = []
        for i in range(request.max_depth):
            truth = self.reference[start + i] if start + i < len(self.reference) else 0
            tokens.append(truth if i < self.right else (truth + 1) % self.vocab_size)
        return DraftTree.chain(torch.tensor([tokens], device=request.roots.device))


def noisy_copy(model: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with Gaussian noise of relative size ``scale`` on every weight."""
    import copy

    clone = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in clone.parameters():
            noise = torch.randn(param.shape, generator=g, dtype=param.dtype)
            param.add_(noise * scale * param.std().clamp_min(1e-3))
    return clone


def draft_request(ids: torch.Tensor, depth: int, sampling, rng, max_nodes=None):
    """The request a drafter started on prompts ``ids`` [B, T] gets at the first step."""
    from specdec.drafters import DraftRequest

    b = ids.shape[0]
    lengths = torch.full((b,), ids.shape[1], dtype=torch.long)
    return DraftRequest(ids[:, -1], lengths, [depth] * b, sampling, rng, max_nodes)
