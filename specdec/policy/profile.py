"""``python -m specdec.policy.profile``: measure this machine's kernels, profile the target's verification and the
drafters' cost, and fit the goodput policy's latency model.

Hydra app (needs the ``bench`` extra): ``target=`` and ``drafters=`` (names of ``configs/drafter/``
configs; default every one whose artifact exists).  Measures the product paths the target's forward
should take here (:class:`~specdec.target.kernels.Kernels`), then times ``Target.verify`` over batch
sizes, draft nodes and contexts and each drafter's draft seconds per step over depths and batch
sizes, fits the regressions (linear or quadratic, by held-out R^2), prints R^2, and saves the JSON
where SmartSpec and every Target look for it: beside the model cache, keyed by model, dtype,
device and thread count.  The first ``generate`` with a drafter on a new machine makes a shorter
one by itself (``quick=true`` here).
"""
from __future__ import annotations

import json
import logging


def main() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="profile")(_run)()


def _run(cfg) -> None:
    import torch
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from specdec.configs import instantiate_with_target

    from .latency import default_path
    from .profiling import FULL, QUICK, profile

    log = logging.getLogger("specdec.policy.profile")
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    model, _ = instantiate(cfg.target.load)
    names = list(cfg.drafters) if cfg.drafters else GlobalHydra.instance().config_loader().get_group_options("drafter")
    built = {}
    for name in names:
        node = hydra_compose(name, cfg)
        if node.get("_target_") is None:
            continue
        try:
            drafter = instantiate_with_target(OmegaConf.create({k: v for k, v in
                                                               OmegaConf.to_container(node, resolve=True).items()
                                                               if k != "generate"}), model)
        except Exception as error:  # a drafter whose artifact is missing is skipped
            log.warning("skipping %s: %s", name, error)
            continue
        built[drafter.cost_name] = drafter
    grid = OmegaConf.to_container(cfg.grid, resolve=True) if cfg.get("grid") else None
    with torch.inference_mode():
        result = profile(model, built, quick=bool(cfg.quick), grid=grid, progress=True)
    path = default_path(result.key) if cfg.out is None else cfg.out
    result.save(path)
    summary = {"key": result.key, "kernels": result.kernels,
               "verify": {"form": result.verify.form, "r2_heldout": result.verify.r2_heldout},
               "draft": {k: {"form": v.form, "r2_heldout": v.r2_heldout} for k, v in result.draft.items()},
               "grid": grid or (QUICK if cfg.quick else FULL), "saved": str(path)}
    log.info("latency model: %s", summary)
    print(json.dumps(summary))


def hydra_compose(drafter: str, cfg):
    import hydra
    from hydra.core.hydra_config import HydraConfig

    overrides = [o for o in HydraConfig.get().overrides.task if not o.split("=", 1)[0].lstrip("+~").startswith("drafters")]
    return hydra.compose("profile", overrides=overrides + [f"+drafter={drafter}"]).drafter


if __name__ == "__main__":
    main()
