"""Python's own documentation: ``pydoc_data.topics`` (the language reference) and standard-library docstrings.

Long technical prose that ships with every Python.  The reference topics and the long docstrings
(``min_docstring_words`` and more; read with ``ast``, nothing is imported) are cut into chunks for
"explain/summarise this" and RAG prompts about the identifiers they mention; module and topic names
give short questions and "show me an example" coding requests.  All are self-distillation prompts.
"""
from __future__ import annotations

import ast
import random
import re
import sys
import sysconfig
from pathlib import Path

from . import chunk_paragraphs, paragraphs, rag_chat, record

PACKAGES: list[str] = []  # the running Python: see cards()
NOTE = (f"Python {sys.version.split()[0]}: pydoc_data.topics and standard-library docstrings, "
        "Python Software Foundation License (PSF-2.0).")

SUMMARIZE = [
    "Explain this part of the Python documentation in plain words:\n\n{text}",
    "{text}\n\nSummarize this documentation in a few sentences.",
    "What is this text about? Give a short summary.\n\n{text}",
    "Rewrite the following technical documentation as a short, beginner-friendly explanation:\n\n{text}",
    "{text}\n\nI'm new to Python. Can you explain what this means, with a small example?",
    "Summarize the key rules described here as a bulleted list.\n\n{text}",
]
IDENT_QUESTIONS = [
    "What does {name} do, according to the documentation?",
    "How is {name} used?",
    "What does the context say about {name}?",
    "When should I use {name}?",
]
GENERAL_QUESTIONS = [
    "What is this documentation section about?",
    "What are the main rules described in the context?",
    "Which errors or exceptions does the context mention, and when are they raised?",
]
TOPIC_QA = ["What is {title} in Python?", "How does {title} work in Python?", "Can you explain {title} in Python?"]
MODULE_QA = ["What is the Python `{module}` module used for?", "What does the `{module}` module in Python's standard "
             "library do?", "When would I use Python's `{module}` module?"]
CODE = ["Write a short Python example that uses the `{module}` module.",
        "Show me how to use `{module}.{name}` in Python with a small example.",
        "Write a Python function that uses `{module}.{name}` and explain how it works.",
        "Give me a simple, commented Python script that demonstrates the `{module}` module."]
SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip",
             "__pycache__"}


def cards(cfg=None) -> list[dict]:
    return [{"package": "Python (pydoc_data, standard library)", "version": sys.version.split()[0],
             "license": "PSF-2.0"}]


def topics() -> list[tuple[str, str, str]]:
    """``(key, title, body)`` of every reference topic, the title line and its underline split off."""
    from pydoc_data.topics import topics as table

    out = []
    for key in sorted(table):
        lines = table[key].strip("\n").splitlines()
        if len(lines) > 2 and set(lines[1].strip()) <= {"*", "=", "-"}:
            out.append((key, lines[0].strip(), "\n".join(lines[2:]).strip()))
    return out


def docstrings(min_words: int) -> list[tuple[str, str, str]]:
    """``(module, object name or '', docstring)`` of standard-library modules, classes and functions."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS & set(rel.parts) or (rel.name.startswith("_") and rel.name != "__init__.py"):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree] + [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
        for node in nodes:
            doc = ast.get_docstring(node)
            if doc and len(doc.split()) >= min_words:
                out.append((module, getattr(node, "name", ""), doc))
    return out


def identifiers(text: str) -> list[str]:
    """Quoted names (``"with"``), calls (``open()``) and dotted names mentioned in a chunk, in order, once each."""
    found = re.findall(r'"([A-Za-z_][\w.]*(?:\(\))?)"|`([A-Za-z_][\w.]*)`|\b([A-Za-z_][\w.]*\(\))', text)
    seen: dict[str, None] = {}
    for groups in found:
        name = next(g for g in groups if g)
        if len(name) > 2:
            seen.setdefault(f'"{name}"' if not name.endswith("()") else name)
    return list(seen)


def public_names(module_docs: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for module, name, _ in module_docs:
        names.setdefault(module, [])
        if name and not name.startswith("_"):
            names[module].append(name)
    return names


def records(cfg, rng: random.Random, count=None) -> list[dict]:
    ref, mods = topics(), docstrings(int(cfg.min_docstring_words))
    chunks = []
    for key, title, body in ref:
        for j, c in enumerate(chunk_paragraphs(paragraphs(body), int(cfg.min_words), int(cfg.max_words), rng)):
            chunks.append((f"topic-{key}-c{j:02d}", f"Python Language Reference – {title}", c))
    for module, name, doc in mods:
        label = f"{module}.{name}" if name else module
        for j, c in enumerate(chunk_paragraphs(paragraphs(doc), int(cfg.min_words), int(cfg.max_words), rng)):
            chunks.append((f"doc-{label}-c{j:02d}", f"Python standard library – {label} (docstring)", c))
    rng.shuffle(chunks)
    n_sum, n_rag = int(cfg.summarize), int(cfg.rag)
    out = []
    for i, (key, title, chunk) in enumerate(chunks[: n_sum + n_rag]):
        if i < n_sum:
            prompt = rng.choice(SUMMARIZE).format(text=chunk)
            out.append(record("pydocs", f"{key}/summarize", "summarization", [("user", prompt)]))
            continue
        own, other = identifiers(chunk), identifiers(chunks[(i + 1) % len(chunks)][2])
        missing = [n for n in other if n.strip('"') not in chunk]
        roll = rng.random()
        if missing and roll < float(cfg.unanswerable):
            question = rng.choice(IDENT_QUESTIONS[:3]).format(name=rng.choice(missing[:5]))
        elif own and roll < 0.8:
            question = rng.choice(IDENT_QUESTIONS).format(name=rng.choice(own[:6]))
        else:
            question = rng.choice(GENERAL_QUESTIONS)
        out.append(record("pydocs", f"{key}/rag", "rag", rag_chat(rng, title, chunk, question)))
    qa = sorted({q.format(title=t.lower()) for _, t, _ in ref for q in TOPIC_QA} |
                {q.format(module=m) for m, _, _ in mods for q in MODULE_QA})
    for k, question in enumerate(rng.sample(qa, min(int(cfg.qa), len(qa)))):
        out.append(record("pydocs", f"qa-{k:04d}/0", "qa", [("user", question)]))
    names = public_names(mods)
    code = sorted({t.format(module=m, name=n) for m, ns in names.items() for n in ns for t in CODE[1:3]} |
                  {t.format(module=m, name="") for m in names for t in (CODE[0], CODE[3])})
    for k, request in enumerate(rng.sample(code, min(int(cfg.code), len(code)))):
        out.append(record("pydocs", f"code-{k:04d}/0", "code", [("user", request)]))
    return out
