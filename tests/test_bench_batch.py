"""`python -m specdec.bench.batch` end to end on the tiny target: every run, ratios, equivalence, files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses or the real model: seconds each


def test_batch_benchmark_on_the_tiny_target(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "specdec.bench.batch", "target=tiny", f"hydra.run.dir={tmp_path}",
                           "batch_sizes=[1,2,4]", "drafter=draft_model"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    doc = json.loads((tmp_path / "batch.json").read_text())
    assert {p.name for p in tmp_path.iterdir()} >= {"batch.json", "batch.md", "batch.png"}
    assert doc["batch_sizes"] == [1, 2, 4] and doc["policies"] == ["plain", "eqspec", "exspec"]
    assert set(doc["runs"]) == {f"{p}@{b}" for p in doc["policies"] for b in doc["batch_sizes"]}
    for key, run in doc["runs"].items():
        # float64 tiny model: every policy and batch size reproduces batch-size-1 plain decoding
        assert run["equivalence"] == 1.0, key
        assert run["tokens"] == sum(run["row_tokens"]) and len(run["row_tokens"]) == doc["prompts"]
        assert abs(run["vs_batch1"] * doc["runs"][f"{run['policy']}@1"]["tokens_per_second"]
                   - run["tokens_per_second"]) < 1e-6
        assert summary["throughput"][run["policy"]][str(run["batch_size"])] == round(run["tokens_per_second"], 2)
    assert doc["runs"]["plain@2"]["mean_accepted_tokens"] == 1.0
    assert doc["runs"]["eqspec@2"]["mean_accepted_tokens"] > 1.0  # the self-draft of the tiny target
    assert "| exspec | 4 |" in (tmp_path / "batch.md").read_text()
