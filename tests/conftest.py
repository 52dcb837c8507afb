"""Shared test helpers. `tiny_llama` is a plain function too: `from conftest import tiny_llama`."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Tiny models gain nothing from threads, and on a 2-core machine shared with other work
# oversubscribed threads make them ~30x slower.
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "goodput_default: the test exercises generate's default goodput policy")
    config.addinivalue_line("markers", "slow: seconds or more each (real model, subprocesses, training); "
                                       "`pytest -m \"not slow\"` leaves them out")


@pytest.fixture(scope="session", autouse=True)
def private_profiles(tmp_path_factory):
    """Latency profiles (and measured kernels) made by tests go to a folder of their own, never the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SPECDEC_PROFILES", str(tmp_path_factory.mktemp("profiles")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def drafter_depth_by_default(request, monkeypatch):
    """Tests decode with the drafter's own depth and tree when they pass no ``speculation``.

    The default goodput policy sizes each step's tree from measured step times, so what a test
    verified would depend on the machine's timing (and could fall back to plain decoding, leaving a
    drafter's path untested).  Tests marked ``goodput_default`` get the real default.
    """
    if request.node.get_closest_marker("goodput_default") is None:
        import specdec.policy.speculation

        monkeypatch.setattr(specdec.policy.speculation, "default_policy",
                            lambda drafter: specdec.policy.speculation.FixedLength(int(drafter.num_tokens)))


def tiny_llama(vocab_size: int = 64, seed: int = 0, dtype: torch.dtype = torch.float64, num_layers: int = 2,
               hidden: int = 32, heads: int = 4, kv_heads: int = 2, max_pos: int = 256,
               **config_overrides) -> LlamaForCausalLM:
    """A randomly initialised Llama in eval mode; the same arguments give the same weights.

    The global torch RNG is left as it was.  Extra keyword arguments go to `LlamaConfig`.
    """
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_pos, **config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


@pytest.fixture
def tiny_llama_model() -> LlamaForCausalLM:
    """`tiny_llama()` with its defaults."""
    return tiny_llama()
