"""Build the repetitive workload (``configs/dataset/repetitive.yaml``): requests that repeat text.

Three categories, each a run of requests over *the same* text, so that one request's output is
much of the next one's (what a suffix cache across requests is for), built only from text that
installs with pip or ships with Python:

* ``edits``: multi-turn edits of one paragraph (the JAX package's description): an earlier turn
  asked for one word replaced and got the paragraph back; this turn asks for another, and the
  whole paragraph again.  Each request edits the same paragraph differently.
* ``code``: one function of the standard library (``textwrap.dedent``, its source as installed),
  rewritten with one name changed; each request renames a different one.
* ``extraction``: one long document (the ``huggingface_hub`` package's description, its prose
  paragraphs) and a request to quote what it says about one subject; each request a different one.
* ``respec``: the same small function asked for again and again under another name (its
  specification is the first line of ``statistics.median``'s docstring): the answer is not in the
  prompt, so only earlier answers, through a suffix cache across requests, can be copied.

Every prompt is checked with ``../shared/decontam/check.py`` (when present) and flagged ones are
dropped.  ``python -m specdec.bench.build_repetitive [--out FOLDER]`` rewrites the packaged files.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import inspect
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "prompts" / "repetitive"
DECONTAM = Path(__file__).resolve().parents[2] / "shared" / "decontam" / "check.py"


def clean(text: str) -> str:
    """Markdown and reStructuredText reduced to plain prose: links to their text, no emphasis marks."""
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"`+([^`]+)`+_?", r"\1", text)
    text = re.sub(r"\*\*?([^*]+)\*\*?", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def prose_paragraphs(distribution: str, min_words: int = 40) -> list[str]:
    """The prose paragraphs of an installed package's long description, cleaned."""
    body = importlib.metadata.distribution(distribution).metadata.get_payload() or ""
    out = []
    for block in re.split(r"\n\s*\n", body):
        first = block.lstrip()[:1]
        if first in "|-*$>#<[.:`=" or "```" in block or "    " in block[:4] or "::" in block:
            continue
        text = clean(block)
        if len(text.split()) >= min_words and text.endswith((".", ":")):
            out.append(text)
    return out


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def edits() -> list[dict]:
    paragraph = prose_paragraphs("jax")[0]
    swaps = [("differentiate", "derive"), ("functions", "routines"), ("loops", "iterations"), ("closures", "lambdas")]
    rows = []
    for i, (old, new) in enumerate(swaps):
        first_old, first_new = swaps[(i + 1) % len(swaps)]
        turn_one = paragraph.replace(first_old, first_new)
        rows.append({"id": f"edits_{i}", "category": "edits", "messages": [
            user(f"Here is a paragraph:\n\n{paragraph}\n\nRepeat it exactly, but replace the word \"{first_old}\" "
                 f"with \"{first_new}\"."),
            {"role": "assistant", "content": turn_one},
            user(f"Good. Now also replace \"{old}\" with \"{new}\", and write out the whole paragraph again."),
        ]})
    return rows


def code() -> list[dict]:
    source = inspect.getsource(importlib.import_module("textwrap").dedent)
    renames = [("margin", "indent"), ("lines", "rows"), ("text", "source"), ("margin", "prefix")]
    rows = []
    for i, (old, new) in enumerate(renames):
        rows.append({"id": f"code_{i}", "category": "code", "messages": [user(
            f"Rewrite this Python function with the variable `{old}` renamed to `{new}`. Change nothing else "
            f"and reply with the code only.\n\n```python\n{source}```")]})
    return rows


def extraction() -> list[dict]:
    document = "\n\n".join(prose_paragraphs("huggingface_hub", 25)[:8])
    subjects = ["the Hub", "files", "models", "repositories"]
    rows = []
    for i, subject in enumerate(subjects):
        rows.append({"id": f"extraction_{i}", "category": "extraction", "messages": [user(
            f"{document}\n\nQuote, word for word, every sentence of the text above that mentions {subject}.")]})
    return rows


def respec() -> list[dict]:
    spec = (inspect.getdoc(importlib.import_module("statistics").median) or "").split("\n\n")[0]
    names = ["median", "middle_value", "find_median", "median_of"]
    return [{"id": f"respec_{i}", "category": "respec", "messages": [user(
        f"Write a Python function `{name}(data)`. {spec} Use only the standard library and include a docstring.")]}
        for i, name in enumerate(names)]


def contaminated(rows: list[dict]) -> list[str]:
    """Ids of the rows the held-out check flags (none when the checker is absent)."""
    if not DECONTAM.exists():
        print(f"note: {DECONTAM} not found; prompts not checked", file=sys.stderr)
        return []
    sys.path.insert(0, str(DECONTAM.parent))
    from check import contaminated as flagged  # noqa: E402

    return [row["id"] for row in rows if flagged(" ".join(m["content"] for m in row["messages"]))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("edits", edits()), ("code", code()), ("extraction", extraction()), ("respec", respec())):
        dropped = set(contaminated(rows))
        kept = [row for row in rows if row["id"] not in dropped]
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in kept:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(kept)} prompts" + (f" ({len(dropped)} dropped by the held-out check)" if dropped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
