"""The command line that made an artifact, for its card: the module and its Hydra overrides as given."""
from __future__ import annotations

import shlex


def command_line(module: str) -> str:
    """``python -m <module> <overrides...>``; just the module outside a Hydra run (a trainer called directly)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # HydraConfig is only set inside @hydra.main
        overrides = []
    return " ".join(["python -m", module, *(shlex.quote(o) for o in overrides)])
