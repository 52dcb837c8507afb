"""The target's side of a step: its forward over a draft tree (``verifier.Target``), the lean Llama
forward, the in-place KV cache and its compaction, tree and padding masks, few-row products and the
machine's measured kernel thresholds, and the output head (full or reduced vocabulary)."""
