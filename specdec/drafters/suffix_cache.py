"""A suffix cache across requests: continuations that followed the same tokens in earlier text.

SuffixDecoding (Oliaro et al., 2024) keeps a suffix tree over earlier prompts and outputs and
drafts what followed the longest match of the current tail.  This cache keeps the part of that
a drafter reads: for every n-gram of ``min_ngram`` to ``max_ngram`` tokens in the text it was
given, where its latest occurrence with a token after it lies.  A lookup probes the context's
tails, longest first, and returns what followed each: ``max_ngram - min_ngram + 1`` dictionary
probes, independent of how much text is stored.

Keys are the n-grams' hashes, checked against the stored tokens on lookup (a collision costs a
miss, never a wrong answer: and a wrong copy would only be rejected by verification anyway).

Memory is bounded by ``max_tokens``: past it, the oldest documents are dropped and the index is
rebuilt from the rest.  Each stored token costs about ``90 * (max_ngram - min_ngram + 1) + 30``
bytes (:attr:`SuffixCache.bytes_per_token`): about 50 MB at the default 100,000 tokens.

A document is one sequence: :meth:`begin` stores a prompt and returns its id, :meth:`extend`
appends what decoding commits to it.  One cache may serve many drafters, jobs and chat turns.
"""
from __future__ import annotations

from collections import OrderedDict


class SuffixCache:
    def __init__(self, max_tokens: int = 100_000, max_ngram: int = 6, min_ngram: int = 2):
        if int(max_tokens) < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if not 1 <= int(min_ngram) <= int(max_ngram):
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.max_tokens, self.max_ngram, self.min_ngram = int(max_tokens), int(max_ngram), int(min_ngram)
        self.documents: OrderedDict[int, list[int]] = OrderedDict()  # oldest first
        self.index: dict[int, tuple[int, int]] = {}  # hash of an n-gram -> (document, start of its latest occurrence)
        self.stored = 0
        self._next_id = 0
        self.lookups = self.hits = 0

    @property
    def bytes_per_token(self) -> int:
        """Rough memory per stored token (index entries and the token itself)."""
        return 90 * (self.max_ngram - self.min_ngram + 1) + 30

    def __len__(self) -> int:
        return self.stored

    def __repr__(self) -> str:
        return (f"SuffixCache({self.stored} of {self.max_tokens} tokens in {len(self.documents)} documents, "
                f"about {self.bytes_per_token * self.max_tokens / 1e6:.0f} MB at most)")

    def clear(self) -> None:
        """Forget every document (the limits stay)."""
        self.documents.clear()
        self.index = {}
        self.stored = 0

    # ---- storing --------------------------------------------------------------------------------
    def begin(self, tokens: list[int]) -> int:
        """Store a new document (a prompt) and return its id."""
        doc = self._next_id
        self._next_id += 1
        self.documents[doc] = []
        self.extend(doc, tokens)
        return doc

    def extend(self, doc: int, tokens: list[int]) -> None:
        """Append ``tokens`` to document ``doc`` (a no-op when it has been dropped)."""
        text = self.documents.get(doc)
        if text is None:
            return
        for token in tokens:
            self._register(doc, text, len(text))
            text.append(int(token))
        self.stored += len(tokens)
        if self.stored > self.max_tokens:
            self._shrink(keep=doc)

    def _register(self, doc: int, text: list[int], end: int) -> None:
        """The n-grams ending at ``end - 1`` now have a token after them (the one at ``end``)."""
        for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
            self.index[hash(tuple(text[end - n:end]))] = (doc, end - n)

    def _shrink(self, keep: int) -> None:
        """Drop the oldest documents (never ``keep``, the one being written) down to three quarters of the
        limit, then rebuild the index (so a full cache rebuilds once per quarter of its size written)."""
        target = (3 * self.max_tokens) // 4
        while self.stored > target and len(self.documents) > 1:
            oldest = next(d for d in self.documents if d != keep)
            self.stored -= len(self.documents.pop(oldest))
        if self.stored > target:  # one document longer than that: keep its tail
            text = self.documents[keep]
            del text[:len(text) - target]
            self.stored = len(text)
        self.index = {}
        for doc, text in self.documents.items():
            for end in range(1, len(text)):
                self._register(doc, text, end)

    # ---- reading --------------------------------------------------------------------------------
    def continuations(self, context: list[int], num_tokens: int) -> list[list[int]]:
        """What followed the latest stored occurrence of each of ``context``'s tails, longest first."""
        return [chain for _, chain in self.matches(context, num_tokens)]

    def matches(self, context: list[int], num_tokens: int) -> list[tuple[int, list[int]]]:
        """``(n, continuation)`` for each of ``context``'s tails of ``n`` tokens stored before, longest first."""
        self.lookups += 1
        out = []
        for n in range(min(self.max_ngram, len(context)), self.min_ngram - 1, -1):
            tail = context[len(context) - n:]
            found = self.index.get(hash(tuple(tail)))
            if found is None:
                continue
            text = self.documents.get(found[0])
            start = found[1]
            if text is None or text[start:start + n] != tail:
                continue  # a dropped document or a hash collision
            follow = text[start + n:start + n + num_tokens]
            if follow:
                out.append((n, follow))
        if out:
            self.hits += 1
        return out
