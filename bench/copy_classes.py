"""``python -m specdec.bench.copy_classes``: how often a copied continuation is right, by how long a match found it.

The measurement behind :func:`specdec.drafters.hybrid.copy_prior` and the hybrid's default
``copy_classes``.  The target answers the packaged prompts the benchmark does not time (the 3rd
to 10th of each category) greedily; then, at every position of each answer, the copies a
:class:`~specdec.drafters.Hybrid` would propose there (its in-context n-gram matches, longest first,
``--candidates`` distinct ones of ``--copy-tokens`` tokens) are compared with what the target said
next.  Greedy acceptance of a copy is exactly that prefix match, so no verification runs.  Prints,
per class of copies, how often it is a step's first candidate, its first token's acceptance and each
next token's acceptance given the previous, and one JSON line.  No timing: any machine state will do.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

from specdec.drafters.hybrid import pick_copies
from specdec.drafters.prompt_lookup import NgramIndex


def copy_acceptance(pairs: list[tuple[list[int], list[int]]], classes: tuple[int, ...], max_ngram: int = 8,
                    candidates: int = 2, copy_tokens: int = 8) -> dict[int, dict]:
    """Per class of copies: ``first`` (share of positions where it is the first candidate), ``chains``
    (candidates seen) and ``rates`` (acceptance of the d-th copied token given the ones before it).

    ``pairs``: (prompt, answer) token lists; at answer position t the context is the prompt and the
    answer's first t tokens, and a copy is accepted for as long as it equals the answer from t on."""
    reached: dict[int, list[int]] = defaultdict(lambda: [0] * (copy_tokens + 1))
    firsts: dict[int, int] = defaultdict(int)
    positions = 0
    for prompt, answer in pairs:
        index = NgramIndex(list(prompt), max_ngram, 1)
        for t in range(len(answer)):
            positions += 1
            for rank, (chain, source) in enumerate(pick_copies(index.matches(copy_tokens), classes, candidates)):
                if rank == 0:
                    firsts[source] += 1
                right = 0
                while right < len(chain) and t + right < len(answer) and chain[right] == answer[t + right]:
                    right += 1
                counts = reached[source]
                for depth in range(right + 1):
                    counts[depth] += 1
            index.extend([answer[t]])
    out = {}
    for source in sorted(reached):
        counts = reached[source]
        rates = [round(counts[d] / counts[d - 1], 3) if counts[d - 1] else None for d in range(1, copy_tokens + 1)]
        out[source] = {"first": round(firsts[source] / max(positions, 1), 3), "chains": counts[0], "rates": rates}
    return out


def _answers(target: str, max_new_tokens: int) -> list[tuple[list[int], list[int]]]:
    import specdec
    from specdec import drafters

    from .prompts import encode, load_prompts

    model, tokenizer = specdec.load_model(target)
    pairs = []
    for prompt in load_prompts(per_category=None):
        if int(prompt.id.rsplit("-", 1)[-1]) <= 2:
            continue  # the benchmark times the first two of each category
        ids = encode(tokenizer, prompt.messages)
        out = specdec.generate(model, ids, drafters.PromptLookup(), max_new_tokens=max_new_tokens)
        pairs.append((ids[0].tolist(), out.sequences[0, ids.shape[1]:].tolist()))
    return pairs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--classes", default="4,2,1", help="shortest match of each class, longest first")
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--copy-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    classes = tuple(int(c) for c in args.classes.split(","))
    table = copy_acceptance(_answers(args.target, args.max_new_tokens), classes, max(8, classes[0]),
                            args.candidates, args.copy_tokens)
    for source, row in table.items():
        print(f"class {source} (match >= {classes[source - 1]}): first candidate at {row['first']:.0%} of positions, "
              f"{row['chains']} copies, acceptance by depth {row['rates']}")
    print(json.dumps({"what": "copy_classes", "target": args.target, "classes": classes, "table": table}))


if __name__ == "__main__":
    main()
