"""Exact enumeration of every outcome of a randomised computation, with its probability.

A computation that makes all its random decisions through :class:`specdec.sampling.Randomness`
(``coins`` and ``categorical``) is run once per outcome path with a scripted stand-in, and the
probabilities of the choices along each path are multiplied; the result is the computation's
exact output law, no sampling involved.
"""
from __future__ import annotations

from collections import defaultdict

import torch


class ScriptedRandomness:
    """Replays a script of choices, then takes the first possible choice at each new decision."""

    def __init__(self, script: list[int]):
        self.script = list(script)
        self.choices: list[int] = []
        self.options: list[list[float]] = []  # probability of each alternative at each decision
        self.weight = 1.0

    def _decide(self, weights: list[float]) -> int:
        i = len(self.choices)
        if i < len(self.script):
            choice = self.script[i]
        else:
            choice = next(c for c, w in enumerate(weights) if w > 0)
        self.choices.append(choice)
        self.options.append(weights)
        self.weight *= weights[choice]
        return choice

    def coins(self, prob: torch.Tensor) -> torch.Tensor:
        flat = [min(max(float(x), 0.0), 1.0) for x in prob.reshape(-1).tolist()]
        out = [bool(self._decide([1.0 - x, x])) for x in flat]
        return torch.tensor(out, dtype=torch.bool, device=prob.device).reshape(prob.shape)

    def categorical(self, probs: torch.Tensor) -> torch.Tensor:
        rows = probs.reshape(-1, probs.shape[-1])
        out = []
        for row in rows:
            row = row / row.sum()
            out.append(self._decide(row.tolist()))
        return torch.tensor(out, dtype=torch.long, device=probs.device).reshape(probs.shape[:-1])


    def without_replacement(self, probs: torch.Tensor, count: int) -> torch.Tensor:
        """Sequential draws without replacement: the law Gumbel-Top-k samples from."""
        out = []
        for row in probs.reshape(-1, probs.shape[-1]):
            law, drawn = row.clone(), []
            for _ in range(count):
                if law.sum() <= 0:
                    drawn.append(-1)
                    continue
                x = self._decide((law / law.sum()).tolist())
                drawn.append(x)
                law[x] = 0
            out.append(drawn)
        return torch.tensor(out, dtype=torch.long, device=probs.device)


    def gumbel(self, shape, dtype, device):
        raise TypeError("continuous Gumbel noise cannot be enumerated (see test_stochastic_beam_exact.py)")


def enumerate_law(run, tolerance: float = 0.0) -> dict:
    """Exact law of ``run(rng)``'s (hashable) result over every path of random choices.

    Paths whose probability falls to ``tolerance`` or below are not expanded further.
    """
    law: dict = defaultdict(float)
    stack: list[list[int]] = [[]]
    while stack:
        prefix = stack.pop()
        rng = ScriptedRandomness(prefix)
        outcome = run(rng)
        law[outcome] += rng.weight
        weight = 1.0
        for i, (choice, weights) in enumerate(zip(rng.choices, rng.options)):
            if i >= len(prefix):
                for alt in range(choice + 1, len(weights)):
                    if weights[alt] > 0 and weight * weights[alt] > tolerance:
                        stack.append(rng.choices[:i] + [alt])
            weight *= weights[choice]
    return dict(law)
