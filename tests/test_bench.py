"""`python -m specdec.bench` end to end on the tiny target: files, fields, repeats, summary line, equivalence,
warm-up progress, the quick preset."""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from specdec.bench import metrics
from specdec.bench.app import select_methods

pytestmark = pytest.mark.slow  # subprocesses or the real model: seconds each

TOP_LEVEL = {"schema_version", "created", "target", "baseline", "methods", "repeats", "spread", "skipped", "decoding",
             "dataset", "environment", "timing", "load", "output_dir", "overall", "by_category", "records",
             "method_configs", "config"}
DECODING = {"max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id", "pad_token_id", "seed"}
DATASET = {"path", "categories", "per_category", "prompts"}
ENVIRONMENT = {"python", "torch", "transformers", "platform", "cpu_count", "num_threads"}
TIMING = {"load_seconds", "build_seconds", "warmup_seconds", "warmup_by_method", "run_seconds", "wall_seconds"}
LOAD = {"cpu_count", "threads", "loadavg_before", "loadavg_after", "own_after", "others_before", "others_after",
        "others_max", "others_limit", "samples", "calibration_before", "calibration_after", "calibration_change",
        "calibration_limit", "busy", "reasons"}
RECORD = {"prompt_id", "category", "method", "repeat", "prompt_tokens", "new_tokens", "seconds", "target_forwards",
          "steps", "draft_seconds", "verify_seconds", "other_seconds", "accepted_histogram", "depth_accepted",
          "accepted_copies", "identical"}
SUMMARY = {"target", "baseline", "prompts", "repeats", "max_new_tokens", "wall_seconds", "busy", "output_dir",
           "methods"}
SUMMARY_METHOD = {"tok_s", "speedup", "speedup_min", "speedup_max", "mean_accepted", "equivalence"}
REPEATS = 3  # bench.yaml's default; target=tiny keeps it
CATEGORIES = ["conversation", "translation", "summarization", "qa", "math", "rag"]
ALL_METHODS = ["hf_generate", "specdec_none", "specdec_auto", "specdec_draft_model", "specdec_hybrid_draft",
               "specdec_prompt_lookup",
               "specdec_rsd_beam", "specdec_rsd_gumbel", "hf_assisted", "hf_prompt_lookup"]


def bench(tmp_path, *overrides, stderr: list | None = None):
    """Run the benchmark in a subprocess; return (stdout lines, results.json); ``stderr`` receives stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "specdec.bench", "target=tiny", f"hydra.run.dir={tmp_path}",
                           *overrides], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if stderr is not None:
        stderr.append(proc.stderr)
    return proc.stdout.strip().splitlines(), json.loads((tmp_path / "results.json").read_text())


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bench")
    stderr = []
    lines, doc = bench(tmp_path, stderr=stderr)
    return tmp_path, lines, doc, stderr[0]


def test_default_run_writes_every_documented_field(default_run):
    """results.json carries every field bench/README.md documents, for every method and category."""
    _, _, doc, _ = default_run
    assert set(doc) == TOP_LEVEL and doc["schema_version"] == 2
    assert set(doc["decoding"]) == DECODING and set(doc["dataset"]) == DATASET
    assert set(doc["environment"]) == ENVIRONMENT and set(doc["timing"]) == TIMING and set(doc["load"]) == LOAD
    assert set(doc["timing"]["warmup_by_method"]) == set(ALL_METHODS)
    assert isinstance(doc["load"]["busy"], bool) and doc["load"]["busy"] == bool(doc["load"]["reasons"])
    assert doc["repeats"] == REPEATS and doc["spread"] == "min-max over repeats, per prompt"
    assert doc["methods"] == ALL_METHODS and doc["baseline"] == "hf_generate"
    # no Medusa heads exist for the random tiny target: `methods=all` skips them and says why
    assert set(doc["skipped"]) == {"specdec_chimera", "specdec_hybrid_chimera", "specdec_hybrid_chimera_no_cache",
                                  "specdec_hybrid_chimera_one_class",
                                  "specdec_medusa", "specdec_medusa_typical"}
    assert all("artifact" in why and "not found" in why for why in doc["skipped"].values())
    assert list(doc["by_category"]) == CATEGORIES == doc["dataset"]["categories"]
    for table in [doc["overall"], *doc["by_category"].values()]:
        assert list(table) == ALL_METHODS
        assert all(tuple(row) == metrics.METRICS for row in table.values())
    assert len(doc["records"]) == len(ALL_METHODS) * len(CATEGORIES) * REPEATS
    assert all(set(r) == RECORD for r in doc["records"])
    assert set(doc["method_configs"]) == set(ALL_METHODS) | set(doc["skipped"])


def readme_table(title: str) -> dict[str, str]:
    """``{field: content}`` of the table under bench/README.md's heading ``title`` (first cell's backticked names)."""
    text = (Path(__file__).resolve().parents[1] / "bench" / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            for name in re.findall(r"`([a-z_]+)`", cells[0]):
                rows[name] = " | ".join(cells[1:])
    return rows


def test_bench_readme_documents_every_field_and_no_other(default_run):
    """bench/README.md's results.json and metrics tables name exactly the fields the run writes."""
    _, _, doc, _ = default_run
    top = readme_table("`results.json` (schema_version 2)")
    assert set(top) == TOP_LEVEL
    assert set(readme_table("Metrics (per method, overall and per category)")) == set(metrics.METRICS)
    for key, fields in (("timing", TIMING), ("load", LOAD), ("records", RECORD), ("decoding", DECODING),
                        ("dataset", DATASET), ("environment", ENVIRONMENT)):
        assert set(doc[key] if key != "records" else doc["records"][0]) == fields
        named = set(re.findall(r"[a-z_]+", top[key]))
        assert fields <= named, (key, fields - named)


def test_default_run_numbers_are_consistent(default_run):
    """Every run generates the budget or stops at eos; the baseline is 1.0x; drafters accept > 1 token."""
    _, _, doc, _ = default_run
    budget = doc["decoding"]["max_new_tokens"]
    assert all(0 < r["new_tokens"] <= budget and r["seconds"] > 0 for r in doc["records"])
    for r in doc["records"]:  # one verification per step, plus the prompt's prefill
        if r["method"].startswith("specdec_"):
            assert r["target_forwards"] - r["steps"] in (0, 1)
    overall = doc["overall"]
    assert overall["hf_generate"]["speedup"] == 1.0 and overall["hf_generate"]["mean_accepted_tokens"] == 1.0
    assert overall["specdec_none"]["mean_accepted_tokens"] == 1.0
    for name in ("specdec_draft_model", "specdec_rsd_gumbel", "specdec_rsd_beam", "hf_assisted"):
        assert overall[name]["mean_accepted_tokens"] > 1.0
    for name in ALL_METHODS:
        shares = [overall[name][k] for k in ("draft_share", "verify_share", "other_share")]
        if name.startswith("specdec_"):
            assert sum(shares) == pytest.approx(1.0)
        else:
            assert shares == [None, None, None]


def test_greedy_specdec_output_is_the_baselines(default_run):
    """Greedy equivalence is 1.0 for every specdec method (and Hugging Face's) on the float64 tiny target."""
    _, _, doc, _ = default_run
    for name in ALL_METHODS:
        assert doc["overall"][name]["equivalence"] == 1.0, name
    assert all(r["identical"] is True for r in doc["records"])


def test_default_run_writes_markdown_plot_and_a_json_last_line(default_run):
    """The Markdown table and PNG plot exist; stdout's last line is the compact JSON summary."""
    tmp_path, lines, doc, _ = default_run
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {name} |" in table for name in ALL_METHODS)
    assert "## Machine load" in table and ("Warning: the machine was busy" in table) == doc["load"]["busy"]
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(lines[-1])
    assert set(summary) == SUMMARY and summary["repeats"] == REPEATS and summary["busy"] == doc["load"]["busy"]
    assert summary["output_dir"] == str(tmp_path) == doc["output_dir"]
    assert list(summary["methods"]) == ALL_METHODS
    assert all(set(m) == SUMMARY_METHOD for m in summary["methods"].values())


def test_every_method_runs_repeats_times_per_prompt_in_rotated_rounds(default_run):
    """Each (prompt, method) has runs 0..repeats-1; a round runs every method once, the first method rotating."""
    _, _, doc, _ = default_run
    runs = {}
    for r in doc["records"]:
        runs.setdefault((r["prompt_id"], r["method"]), []).append(r["repeat"])
    assert len(runs) == len(CATEGORIES) * len(ALL_METHODS)
    assert all(sorted(repeats) == list(range(REPEATS)) for repeats in runs.values())
    rounds = [doc["records"][i:i + len(ALL_METHODS)] for i in range(0, len(doc["records"]), len(ALL_METHODS))]
    assert all(len({(r["prompt_id"], r["repeat"]) for r in rnd}) == 1 for rnd in rounds)
    assert all(sorted(r["method"] for r in rnd) == sorted(ALL_METHODS) for rnd in rounds)
    assert [rnd[0]["method"] for rnd in rounds[:len(ALL_METHODS)]] == ALL_METHODS  # the start rotates
    assert [rnd[0]["repeat"] for rnd in rounds] == sorted(r for r in range(REPEATS) for _ in CATEGORIES)  # passes


def test_medians_and_spreads_come_from_the_runs(default_run):
    """seconds = sum of per-prompt medians; min <= median <= max for tokens/s and speedup, as the records give."""
    _, _, doc, _ = default_run
    for category, table in [("all", doc["overall"]), *doc["by_category"].items()]:
        for method, row in table.items():
            runs = [r for r in doc["records"] if r["method"] == method and category in ("all", r["category"])]
            by_prompt = {}
            for r in runs:
                by_prompt.setdefault(r["prompt_id"], []).append(r["seconds"])
            assert row["runs"] == len(runs) == REPEATS * row["prompts"]
            assert row["seconds"] == pytest.approx(sum(statistics.median(v) for v in by_prompt.values()))
            slowest = sum(max(v) for v in by_prompt.values())
            assert row["tokens_per_second_min"] == pytest.approx(row["new_tokens"] / slowest)
            assert row["tokens_per_second_min"] <= row["tokens_per_second"] <= row["tokens_per_second_max"]
            assert row["speedup_min"] <= row["speedup"] <= row["speedup_max"]


def test_warm_up_shows_progress(default_run):
    """The warm-up logs one timed line per method (stdout and bench.log) and draws a bar on stderr."""
    tmp_path, lines, doc, stderr = default_run
    log = (tmp_path / "bench.log").read_text()
    for i, name in enumerate(ALL_METHODS, 1):
        assert f"warm-up {i}/{len(ALL_METHODS)} {name}: " in log
        assert any(f"warm-up {i}/{len(ALL_METHODS)} {name}: " in line for line in lines)
    assert "warm-up:" in stderr and "built specdec_draft_model in" in log


def test_quick_preset_composes_and_runs_on_the_tiny_target(tmp_path):
    """`preset=quick`: the baseline and three methods, one repeat, one prompt per category."""
    lines, doc = bench(tmp_path, "preset=quick")
    assert doc["methods"] == ["hf_generate", "specdec_prompt_lookup", "specdec_draft_model", "hf_prompt_lookup"]
    assert doc["repeats"] == 1 and doc["dataset"]["prompts"] == len(CATEGORIES)
    assert doc["decoding"]["max_new_tokens"] == 32 and doc["skipped"] == {}
    assert len(doc["records"]) == 4 * len(CATEGORIES)
    row = doc["overall"]["specdec_prompt_lookup"]  # one repeat: the spread collapses onto the value
    assert row["speedup_min"] == row["speedup"] == row["speedup_max"]
    assert json.loads(lines[-1])["repeats"] == 1


def test_drafter_override_runs_one_specdec_method_and_sampling_has_no_equivalence(tmp_path):
    """`drafter=X` runs the baseline and specdec_X with its overrides; sampling reports equivalence null."""
    lines, doc = bench(tmp_path, "drafter=prompt_lookup", "+drafter.num_tokens=4", "do_sample=true",
                       "temperature=0.7", "max_new_tokens=8", "dataset.categories=[qa,math]")
    assert doc["methods"] == ["hf_generate", "specdec_prompt_lookup"]
    assert doc["method_configs"]["specdec_prompt_lookup"]["num_tokens"] == 4
    assert doc["dataset"]["prompts"] == 2 and doc["decoding"]["do_sample"] is True
    assert all(r["identical"] is None for r in doc["records"])
    assert json.loads(lines[-1])["methods"]["specdec_prompt_lookup"]["equivalence"] is None


def test_select_methods_rules():
    """Baseline first; `all` = specdec_<drafter> (none first) then the method/ configs; drafter=X wins."""
    drafters, methods = ["prompt_lookup", "none", "draft_model"], ["hf_generate", "hf_assisted"]
    assert select_methods("all", None, "hf_generate", drafters, methods) == [
        "hf_generate", "specdec_none", "specdec_draft_model", "specdec_prompt_lookup", "hf_assisted"]
    assert select_methods("all", "draft_model", "hf_generate", drafters, methods) == [
        "hf_generate", "specdec_draft_model"]
    assert select_methods(["hf_assisted", "hf_generate"], None, "hf_generate", drafters, methods) == [
        "hf_generate", "hf_assisted"]
    with pytest.raises(ValueError, match="unknown methods"):
        select_methods(["specdec_nope"], None, "hf_generate", drafters, methods)
    with pytest.raises(ValueError, match="baseline"):
        select_methods("all", None, "hf_nope", drafters, methods)


def test_a_drafter_config_may_carry_generate_options():
    """``generate:`` in a drafter config goes to specdec.generate (e.g. lossy typical acceptance), not the drafter."""
    from omegaconf import OmegaConf

    from specdec import DecodeConfig
    from specdec.bench.methods import build_specdec
    from specdec.drafters import PromptLookup

    cfg = OmegaConf.create({"_target_": "specdec.drafters.PromptLookup", "num_tokens": 3,
                            "generate": {"typical_acceptance": [0.1, 0.2]}})
    method = build_specdec("specdec_x", cfg, None, DecodeConfig(max_new_tokens=4))
    assert isinstance(method.drafter, PromptLookup) and method.drafter.num_tokens == 3
    assert method.generate_kwargs == {"typical_acceptance": [0.1, 0.2]}
