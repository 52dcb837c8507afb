"""Write a benchmark result: ``results.json``, ``results.md``, ``results.png`` and a one-line summary.

The JSON document is described field by field in bench/README.md; the Markdown and the plot
are views of its ``overall`` and ``by_category`` tables.
"""
from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 2
SPREAD = "min-max over repeats, per prompt"  # see specdec.bench.metrics


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
    """Compact JSON: per method tokens/s, speedup (median and spread), mean accepted tokens, equivalence."""
    keys = {"tokens_per_second": "tok_s", "speedup": "speedup", "speedup_min": "speedup_min",
            "speedup_max": "speedup_max", "mean_accepted_tokens": "mean_accepted", "equivalence": "equivalence"}
    methods = {m: {short: _round(document["overall"][m][k]) for k, short in keys.items()}
               for m in document["methods"]}
    summary = {"target": document["target"], "baseline": document["baseline"],
               "prompts": document["dataset"]["prompts"], "repeats": document["repeats"],
               "max_new_tokens": document["decoding"]["max_new_tokens"],
               "wall_seconds": _round(document["timing"]["wall_seconds"], 1),
               "busy": document["load"]["busy"],
               "output_dir": document["output_dir"], "methods": methods}
    return json.dumps(summary, separators=(",", ":"))


def busy_warning(document: dict) -> list[str]:
    """The busy-machine warning as Markdown lines (none when the machine was quiet)."""
    load = document["load"]
    if not load["busy"]:
        return []
    return ["> **Warning: the machine was busy during this run; these timings are not trustworthy.**",
            *[f"> - {reason}" for reason in load["reasons"]],
            "> Run again on a quiet machine (bench/README.md, \"Machine load\").", ""]


def markdown(document: dict) -> str:
    """Busy warning, the overall table, speedup and mean accepted tokens per category, acceptance, load."""
    decoding = document["decoding"]
    mode = "greedy" if not decoding["do_sample"] else f"sampling (temperature {decoding['temperature']})"
    lines = [
        f"# specdec benchmark: {document['target']}",
        "",
        *busy_warning(document),
        f"{document['dataset']['prompts']} prompts in {len(document['by_category'])} categories, "
        f"{document['repeats']} repeats (interleaved), max_new_tokens={decoding['max_new_tokens']}, {mode}, "
        f"baseline `{document['baseline']}`, {document['environment']['num_threads']} torch threads, "
        f"wall time {document['timing']['wall_seconds']:.0f} s.",
        "",
        "Times are per-prompt medians over the repeats, summed over prompts; in brackets the spread, "
        f"{SPREAD}: the same number with every prompt's slowest and fastest repeat.",
        "",
        "| method | tokens/s | speedup | mean accepted | target forwards | draft / verify / other | equivalence |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for m in document["methods"]:
        r = document["overall"][m]
        shares = ("–" if r["draft_share"] is None else
                  f"{r['draft_share']:.0%} / {r['verify_share']:.0%} / {r['other_share']:.0%}")
        lines.append(f"| {m} | {_spread(r, 'tokens_per_second', '.1f')} | {_spread(r, 'speedup', '.2f', '×')} | "
                     f"{_fmt(r['mean_accepted_tokens'], '.2f')} | {r['target_forwards']} | {shares} | "
                     f"{_fmt(r['equivalence'], '.2f')} |")
    categories = list(document["by_category"])
    for title, key, spec, unit, spread in (("Speedup by category", "speedup", ".2f", "×", True),
                                           ("Mean accepted tokens by category", "mean_accepted_tokens", ".2f", "",
                                            False)):
        lines += ["", f"## {title}", "", "| method | " + " | ".join(categories) + " | all |",
                  "|---|" + "---:|" * (len(categories) + 1)]
        for m in document["methods"]:
            rows = [document["by_category"][c][m] for c in categories] + [document["overall"][m]]
            cells = [_spread(r, key, spec, unit) if spread else _fmt(r[key], spec, unit) for r in rows]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    copies = [m for m in document["methods"] if document["overall"][m].get("copied_share")]
    if copies:
        lines += ["", "## Accepted draft tokens that were copies, by category", "",
                  "| method | " + " | ".join(categories) + " | all |", "|---|" + "---:|" * (len(categories) + 1)]
        for m in copies:
            rows = [document["by_category"][c][m] for c in categories] + [document["overall"][m]]
            lines.append(f"| {m} | " + " | ".join(_fmt(r.get("copied_share"), '.0%') for r in rows) + " |")
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
    return "\n".join(lines + load_lines(document["load"])) + "\n"


def load_lines(load: dict) -> list[str]:
    """The machine-load section: load average, other processes' part of it, calibration; the verdict."""
    ms = 1e3
    return [
        "", "## Machine load", "",
        f"{load['cpu_count']} CPUs, {load['threads']} torch threads.  Other processes' load is the 1-minute "
        f"load average minus this run's own share, sampled before the run, after every round and after the "
        f"run; the calibration is a fixed matmul loop timed at the start and the end.",
        "",
        "| | before | after | max | limit |",
        "|---|---:|---:|---:|---:|",
        f"| load average | {_fmt(load['loadavg_before'], '.2f')} | {_fmt(load['loadavg_after'], '.2f')} | | |",
        f"| other processes' load | {_fmt(load['others_before'], '.2f')} | {_fmt(load['others_after'], '.2f')} | "
        f"{_fmt(load['others_max'], '.2f')} | {load['others_limit']:.2f} |",
        f"| calibration (ms) | {_fmt(_scale(load['calibration_before'], ms), '.1f')} | "
        f"{_fmt(_scale(load['calibration_after'], ms), '.1f')} | {_fmt(load['calibration_change'], '.0%')} apart | "
        f"{load['calibration_limit']:.0%} |",
        "",
        "Verdict: **busy**." if load["busy"] else "Verdict: quiet.",
    ]


def plot(document: dict, path: str | Path) -> None:
    """Grouped bars: speedup with its spread as error bars (top) and mean accepted tokens (bottom),
    per category and overall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = list(document["by_category"]) + ["all"]
    methods = document["methods"]

    def row(method, category):
        return (document["overall"] if category == "all" else document["by_category"][category])[method]

    def value(method, category, key):
        v = row(method, category)[key]
        return 0.0 if v is None else v

    def error(method, category, key):
        """Error bar lengths below and above the bar: the spread (zero where unknown)."""
        r = row(method, category)
        if r[key] is None or r.get(f"{key}_min") is None or r.get(f"{key}_max") is None:
            return 0.0, 0.0
        return r[key] - r[f"{key}_min"], r[f"{key}_max"] - r[key]

    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.4 * len(categories) + 2), 8), sharex=True)
    width = 0.8 / max(1, len(methods))
    spread = f"bars from per-prompt medians; whiskers: {SPREAD}"
    for ax, key, label in ((axes[0], "speedup", f"speedup over {document['baseline']}"),
                           (axes[1], "mean_accepted_tokens", "mean accepted tokens per target forward")):
        for j, m in enumerate(methods):
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(categories))]
            heights = [value(m, c, key) for c in categories]
            if key == "speedup":
                below, above = zip(*(error(m, c, key) for c in categories))
                ax.bar(xs, heights, width, label=m, yerr=[below, above], capsize=2,
                       error_kw={"elinewidth": 0.8, "ecolor": "black"})
            else:
                ax.bar(xs, heights, width, label=m)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    title = f"specdec benchmark: {document['target']}, {document['repeats']} repeats ({spread})"
    if document["load"]["busy"]:
        title += "\nWARNING: the machine was busy, timings not trustworthy"
    axes[0].set_title(title, color="red" if document["load"]["busy"] else "black", fontsize="medium")
    axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[1].set_xticks(range(len(categories)))
    axes[1].set_xticklabels(categories)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _spread(row: dict, key: str, spec: str, unit: str = "") -> str:
    """``value (min–max)``, or the value alone when the spread is unknown."""
    low, high = row.get(f"{key}_min"), row.get(f"{key}_max")
    if row[key] is None or low is None or high is None:
        return _fmt(row[key], spec, unit)
    return f"{row[key]:{spec}}{unit} ({low:{spec}}–{high:{spec}})"


def _scale(value, factor: float):
    return None if value is None else value * factor


def _fmt(value, spec: str, unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def _round(value, digits: int = 3):
    return None if value is None else round(value, digits)
