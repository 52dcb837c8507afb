"""Hydra configs (``pkg://specdec.configs``), and how a config that names a target model is instantiated."""
from __future__ import annotations

TARGET_PLACEHOLDER = "???"  # a config field left missing receives the target model


def instantiate_with_target(cfg, target_model, **kwargs):
    """``hydra.utils.instantiate`` where every ``???`` field (at any depth) is the target model."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)

    def fill(node):
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        return target_model if node == TARGET_PLACEHOLDER else node

    return instantiate(fill(container), **kwargs)
