"""Chats to token ids, through the tokenizer's own chat template (or a plain transcript for base models)."""
from __future__ import annotations

import torch


def transcript(messages: list, generation_prompt: bool) -> str:
    """A base model's chat: one ``Role: text`` paragraph per message, then ``Assistant:`` if it is to answer.

    A model without a chat template was trained on plain text, so a chat reaches it as a transcript it
    continues; the training pipeline formats base-model data the same way (``chat_ids``)."""
    text = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    return text + "\n\nAssistant:" if generation_prompt else text


def has_template(tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def chat_ids(tokenizer, messages: list, generation_prompt: bool = True) -> list[int]:
    """Token ids of a chat under the tokenizer's chat template, or its plain transcript without one."""
    if not has_template(tokenizer):
        return list(tokenizer(transcript(messages, generation_prompt))["input_ids"])
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                        return_dict=False)
    if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding whatever return_dict says
        ids = ids["input_ids"]
    return list(ids)


def encode_chat(tokenizer, messages: list) -> torch.Tensor:
    """Token ids ``[1, T]`` of a chat (a list of ``{"role", "content"}``), generation prompt included.

    These are exactly the ids a chat user of the model would send.  A tokenizer without a chat
    template (a base model's) gets a plain transcript, one ``Role: text`` paragraph per message,
    ending with ``Assistant:``.
    """
    return torch.tensor([chat_ids(tokenizer, messages, True)], dtype=torch.long)
