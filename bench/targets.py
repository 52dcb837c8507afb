"""Targets the benchmark can load besides ``specdec.load_model``: a tiny random Llama for tests.

The tiny target pairs a randomly initialised Llama with a byte-level tokenizer (one token per
UTF-8 byte, plus ChatML's two markers) that carries a ChatML chat template, so the benchmark
runs the same code path as on the real model, in seconds and without any download.
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges: ids 0-255 are bytes, 256/257 ChatML's markers."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: ord(c)))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    return tokenizer


def tiny_target(num_layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
                max_positions: int = 4096, seed: int = 0, dtype: str = "float64"):
    """``(model, tokenizer)``: a random Llama in eval mode; the same arguments give the same weights.

    float64 by default: a random model's logits are nearly flat, and float32 rounding between
    one-token and many-token forwards could flip a greedy choice, which is no property of the
    decoding method.
    """
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(getattr(torch, dtype)).eval(), tokenizer
