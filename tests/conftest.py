"""Shared test helpers. `tiny_llama` is a plain function too: `from conftest import tiny_llama`."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Tiny models gain nothing from threads, and on a 2-core machine shared with other work
# oversubscribed threads make them ~30x slower.
torch.set_num_threads(1)


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
