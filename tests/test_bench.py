"""`python -m specdec.bench` end to end on the tiny target: files, fields, summary line, equivalence."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from specdec.bench import metrics
from specdec.bench.app import select_methods

TOP_LEVEL = {"schema_version", "created", "target", "baseline", "methods", "skipped", "decoding", "dataset", "environment",
             "timing", "output_dir", "overall", "by_category", "records", "method_configs", "config"}
DECODING = {"max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id", "pad_token_id", "seed"}
DATASET = {"path", "categories", "per_category", "prompts"}
ENVIRONMENT = {"python", "torch", "transformers", "platform", "cpu_count", "num_threads"}
TIMING = {"load_seconds", "warmup_seconds", "run_seconds", "wall_seconds"}
RECORD = {"prompt_id", "category", "method", "prompt_tokens", "new_tokens", "seconds", "target_forwards", "steps",
          "draft_seconds", "verify_seconds", "other_seconds", "accepted_histogram", "depth_accepted", "identical"}
CATEGORIES = ["conversation", "translation", "summarization", "qa", "math", "rag"]
ALL_METHODS = ["hf_generate", "specdec_none", "specdec_draft_model", "specdec_prompt_lookup",
               "specdec_rsd_beam", "specdec_rsd_gumbel", "hf_assisted", "hf_prompt_lookup"]


def bench(tmp_path, *overrides):
    """Run the benchmark in a subprocess; return (stdout lines, results.json)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "specdec.bench", "target=tiny", f"hydra.run.dir={tmp_path}",
                           *overrides], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines(), json.loads((tmp_path / "results.json").read_text())


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bench")
    lines, doc = bench(tmp_path)
    return tmp_path, lines, doc


def test_default_run_writes_every_documented_field(default_run):
    """results.json carries every field bench/README.md documents, for every method and category."""
    _, _, doc = default_run
    assert set(doc) == TOP_LEVEL
    assert set(doc["decoding"]) == DECODING and set(doc["dataset"]) == DATASET
    assert set(doc["environment"]) == ENVIRONMENT and set(doc["timing"]) == TIMING
    assert doc["methods"] == ALL_METHODS and doc["baseline"] == "hf_generate"
    # no Medusa heads exist for the random tiny target: `methods=all` skips them and says why
    assert set(doc["skipped"]) == {"specdec_chimera", "specdec_medusa", "specdec_medusa_typical"}
    assert all("artifact" in why and "not found" in why for why in doc["skipped"].values())
    assert list(doc["by_category"]) == CATEGORIES == doc["dataset"]["categories"]
    for table in [doc["overall"], *doc["by_category"].values()]:
        assert list(table) == ALL_METHODS
        assert all(tuple(row) == metrics.METRICS for row in table.values())
    assert len(doc["records"]) == len(ALL_METHODS) * len(CATEGORIES)
    assert all(set(r) == RECORD for r in doc["records"])
    assert set(doc["method_configs"]) == set(ALL_METHODS) | set(doc["skipped"])


def test_default_run_numbers_are_consistent(default_run):
    """Every run generates the budget or stops at eos; the baseline is 1.0x; drafters accept > 1 token."""
    _, _, doc = default_run
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
    # Hugging Face assisted generation drafts the same k tokens with the same draft: same acceptance
    assert overall["hf_assisted"]["mean_accepted_tokens"] == overall["specdec_draft_model"]["mean_accepted_tokens"]
    for name in ALL_METHODS:
        shares = [overall[name][k] for k in ("draft_share", "verify_share", "other_share")]
        if name.startswith("specdec_"):
            assert sum(shares) == pytest.approx(1.0)
        else:
            assert shares == [None, None, None]


def test_greedy_specdec_output_is_the_baselines(default_run):
    """Greedy equivalence is 1.0 for every specdec method (and Hugging Face's) on the float64 tiny target."""
    _, _, doc = default_run
    for name in ALL_METHODS:
        assert doc["overall"][name]["equivalence"] == 1.0, name
    assert all(r["identical"] is True for r in doc["records"])


def test_default_run_writes_markdown_plot_and_a_json_last_line(default_run):
    """The Markdown table and PNG plot exist; stdout's last line is the compact JSON summary."""
    tmp_path, lines, doc = default_run
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {name} |" in table for name in ALL_METHODS)
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(lines[-1])
    assert summary["output_dir"] == str(tmp_path) == doc["output_dir"]
    assert list(summary["methods"]) == ALL_METHODS
    assert set(summary["methods"]["specdec_prompt_lookup"]) == {"tok_s", "speedup", "mean_accepted", "equivalence"}


def test_drafter_override_runs_one_specdec_method_and_sampling_has_no_equivalence(tmp_path):
    """`drafter=X` runs the baseline and specdec_X with its overrides; sampling reports equivalence null."""
    lines, doc = bench(tmp_path, "drafter=prompt_lookup", "drafter.num_tokens=4", "do_sample=true",
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
