"""Chats to token ids, through the tokenizer's own chat template (or a plain transcript for base models)."""
from __future__ import annotations

import torch


def encode_chat(tokenizer, messages: list) -> torch.Tensor:
    """Token ids ``[1, T]`` of a chat (a list of ``{"role", "content"}``), generation prompt included.

    These are exactly the ids a chat user of the model would send.  A tokenizer without a chat
    template (a base model's) gets a plain transcript, one ``Role: text`` paragraph per message,
    ending with ``Assistant:``.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        text = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\n\nAssistant:"
        return tokenizer(text, return_tensors="pt")["input_ids"].to(torch.long)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding whatever return_dict says
        ids = ids["input_ids"]
    return torch.tensor([list(ids)], dtype=torch.long)
