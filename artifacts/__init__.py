"""Trained drafter artifacts installed with the package: one folder per artifact, weights and card.json (see specdec.drafters.artifacts)."""
