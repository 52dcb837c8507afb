"""Streaming committed tokens to a Hugging Face streamer (``put``/``end``: TextStreamer, TextIteratorStreamer).

As ``model.generate`` does, the prompt goes first (``put(input_ids)``), then the new tokens:

* batch size 1: each step's committed tokens at once, as a ``[1, n]`` tensor (what Hugging
  Face's assisted generation puts);
* a batch: one ``[B]`` column per output position, rows that already ended filled with the pad
  id, each column put as soon as every row has reached it.  Rows run ahead of each other
  within a step, so a column waits for the slowest row.

Either way the streamed tokens are exactly the generated part of the returned ``sequences``.
"""
from __future__ import annotations

import torch


class BatchStream:
    """Feeds one batch's tokens to ``streamer`` as they are committed."""

    def __init__(self, streamer, input_ids: torch.Tensor, pad: int | None):
        if not (hasattr(streamer, "put") and hasattr(streamer, "end")):
            raise TypeError(f"streamer must have put() and end() (Hugging Face's streamer protocol), "
                            f"got {type(streamer).__name__}")
        self.streamer = streamer
        self.pad = pad
        self.rows: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
        self.done = [False] * input_ids.shape[0]
        self.sent = 0  # columns put so far (batches)
        streamer.put(input_ids.cpu())

    def put(self, row: int, tokens: list[int], finished: bool) -> None:
        """Row ``row`` committed ``tokens``; ``finished`` when it has ended."""
        self.rows[row].extend(tokens)
        self.done[row] = self.done[row] or finished
        if len(self.rows) == 1:
            if tokens:
                self.streamer.put(torch.tensor([tokens], dtype=torch.long))

    def flush(self, final: bool = False) -> None:
        """Put every column that all rows have reached (every column when ``final``)."""
        if len(self.rows) == 1:
            return
        longest = max(len(r) for r in self.rows)
        ready = longest if final else min(longest if d else len(r) for r, d in zip(self.rows, self.done))
        for column in range(self.sent, ready):
            values = []
            for r in self.rows:
                if column < len(r):
                    values.append(r[column])
                elif self.pad is None:
                    raise ValueError("rows ended at different lengths but no pad_token_id is known; pass pad_token_id")
                else:
                    values.append(self.pad)
            self.streamer.put(torch.tensor(values, dtype=torch.long))
        self.sent = max(self.sent, ready)

    def end(self) -> None:
        self.flush(final=True)
        self.streamer.end()
