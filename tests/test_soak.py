"""The soak command's quick level passes, and its leak check fails on a drafter that leaks."""
import pytest
import torch

from specdec import drafters
from specdec.bench import soak


@pytest.mark.slow
def test_quick_soak_passes_every_check():
    """Every check of the quick level, at smaller sizes than the command's own quick level."""
    torch.set_num_threads(1)
    checks = soak.run("quick", progress=lambda row: None, long_tokens=400, calls=60, pool_prompts=32)
    assert {c.name.split(":")[0] for c in checks} == {"long", "repeated", "pool", "interruption", "threads"}
    assert [c.name for c in checks if not c.passed] == []


class Leaky(drafters.PromptLookup):
    """Keeps 48 MB more at every call: what a cache that is never cleared does.  Blocks this large are
    mapped afresh (above glibc's largest mmap threshold), so the resident memory grows even in a process
    whose heap holds much freed memory (the rest of the suite's)."""
    kept = []

    def start(self, *args, **kwargs):
        self.kept.append(torch.ones(12 * 2 ** 20))
        return super().start(*args, **kwargs)


def test_the_repeated_calls_check_catches_a_leak():
    model = soak.tiny_model()
    prompts = [torch.tensor([[5, 6, 7, 5, 6]])]
    assert soak.repeated_calls(model, prompts, "prompt lookup", drafters.PromptLookup(), 30, new_tokens=4).passed
    try:
        assert not soak.repeated_calls(model, prompts, "leaky", Leaky(), 30, new_tokens=4).passed
    finally:
        Leaky.kept.clear()
