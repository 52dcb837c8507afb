"""Cards record the command that made them, overrides included."""
from types import SimpleNamespace

from hydra.core.hydra_config import HydraConfig

from specdec.train.command import command_line


def test_command_line_outside_and_inside_a_hydra_run(monkeypatch):
    assert command_line("specdec.train.draft") == "python -m specdec.train.draft"
    run = SimpleNamespace(overrides=SimpleNamespace(task=["optim.steps=400", "init_from=/a b/c.ckpt"]))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: run))
    assert command_line("specdec.train.draft") == "python -m specdec.train.draft optim.steps=400 'init_from=/a b/c.ckpt'"
