"""Write a benchmark result: ``results.json``, ``results.md``, ``results.png`` and a one-line summary.

The JSON document is described field by field in bench/README.md; the Markdown and the plot
are views of its ``overall`` and ``by_category`` tables.
"""
from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1


def write_all(document: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write the three files into ``out_dir``; return their paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md", "plot": out_dir / "results.png"}
    paths["json"].write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown(document), encoding="utf-8")
    plot(document, paths["plot"])
    return paths


def summary_line(document: dict) -> str:
    """Compact JSON: per method tokens/s, speedup, mean accepted tokens and equivalence."""
    keys = {"tokens_per_second": "tok_s", "speedup": "speedup", "mean_accepted_tokens": "mean_accepted",
            "equivalence": "equivalence"}
    methods = {m: {short: _round(document["overall"][m][k]) for k, short in keys.items()}
               for m in document["methods"]}
    summary = {"target": document["target"], "baseline": document["baseline"],
               "prompts": document["dataset"]["prompts"],
               "max_new_tokens": document["decoding"]["max_new_tokens"],
               "wall_seconds": _round(document["timing"]["wall_seconds"], 1),
               "output_dir": document["output_dir"], "methods": methods}
    return json.dumps(summary, separators=(",", ":"))


def markdown(document: dict) -> str:
    """The overall table, then speedup and mean accepted tokens per category."""
    decoding = document["decoding"]
    mode = "greedy" if not decoding["do_sample"] else f"sampling (temperature {decoding['temperature']})"
    lines = [
        f"# specdec benchmark: {document['target']}",
        "",
        f"{document['dataset']['prompts']} prompts in {len(document['by_category'])} categories, "
        f"max_new_tokens={decoding['max_new_tokens']}, {mode}, baseline `{document['baseline']}`, "
        f"{document['environment']['num_threads']} torch threads, "
        f"wall time {document['timing']['wall_seconds']:.0f} s.",
        "",
        "| method | tokens/s | speedup | mean accepted | target forwards | draft / verify / other | equivalence |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for m in document["methods"]:
        r = document["overall"][m]
        shares = ("–" if r["draft_share"] is None else
                  f"{r['draft_share']:.0%} / {r['verify_share']:.0%} / {r['other_share']:.0%}")
        lines.append(f"| {m} | {_fmt(r['tokens_per_second'], '.1f')} | {_fmt(r['speedup'], '.2f', '×')} | "
                     f"{_fmt(r['mean_accepted_tokens'], '.2f')} | {r['target_forwards']} | {shares} | "
                     f"{_fmt(r['equivalence'], '.2f')} |")
    categories = list(document["by_category"])
    for title, key, spec, unit in (("Speedup by category", "speedup", ".2f", "×"),
                                   ("Mean accepted tokens by category", "mean_accepted_tokens", ".2f", "")):
        lines += ["", f"## {title}", "", "| method | " + " | ".join(categories) + " | all |",
                  "|---|" + "---:|" * (len(categories) + 1)]
        for m in document["methods"]:
            cells = [_fmt(document["by_category"][c][m][key], spec, unit) for c in categories]
            cells.append(_fmt(document["overall"][m][key], spec, unit))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    rates = {m: document["overall"][m].get("acceptance_by_position") for m in document["methods"]}
    rates = {m: r for m, r in rates.items() if r}
    if rates:
        depth = max(len(r) for r in rates.values())
        lines += ["", "## Acceptance rate by draft position", "",
                  "Of the steps that drafted position i and accepted every position before it, the share "
                  "that accepted i too.", "", "| method | " + " | ".join(str(i + 1) for i in range(depth)) + " |",
                  "|---|" + "---:|" * depth]
        for m, r in rates.items():
            lines.append(f"| {m} | " + " | ".join(_fmt(r[i], '.2f') if i < len(r) else "" for i in range(depth))
                         + " |")
    return "\n".join(lines) + "\n"


def plot(document: dict, path: str | Path) -> None:
    """Grouped bars: speedup (top) and mean accepted tokens (bottom), per category and overall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = list(document["by_category"]) + ["all"]
    methods = document["methods"]

    def value(method, category, key):
        table = document["overall"] if category == "all" else document["by_category"][category]
        v = table[method][key]
        return 0.0 if v is None else v

    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.4 * len(categories) + 2), 8), sharex=True)
    width = 0.8 / max(1, len(methods))
    for ax, key, label in ((axes[0], "speedup", f"speedup over {document['baseline']}"),
                           (axes[1], "mean_accepted_tokens", "mean accepted tokens per target forward")):
        for j, m in enumerate(methods):
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(categories))]
            ax.bar(xs, [value(m, c, key) for c in categories], width, label=m)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title(f"specdec benchmark: {document['target']}")
    axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[1].set_xticks(range(len(categories)))
    axes[1].set_xticklabels(categories)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _fmt(value, spec: str, unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def _round(value, digits: int = 3):
    return None if value is None else round(value, digits)
