"""`python -m specdec.bench.sweep` end to end on the tiny target: every cell and policy, the ratios, the files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses or the real model: seconds each


def test_sweep_on_the_tiny_target(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SPECDEC_CACHE=str(tmp_path / "cache"))
    env.pop("SPECDEC_PROFILES", None)  # profiled on first use, into this run's own cache
    proc = subprocess.run([sys.executable, "-m", "specdec.bench.sweep", "target=tiny", f"hydra.run.dir={tmp_path}",
                           "drafters=[draft_model,medusa]", "batch_sizes=[1,2]", "depths=[2]", "repeats=2",
                           "dataset.per_category=1", "max_new_tokens=8"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert {p.name for p in tmp_path.iterdir()} >= {"sweep.json", "sweep.md", "sweep.png"}
    assert set(doc["skipped"]) == {"medusa"}
    assert all(c["control_over_plain"] > 0 for c in doc["cells"]) and "control" in (tmp_path / "sweep.md").read_text()
    assert [(c["drafter"], c["batch_size"]) for c in doc["cells"]] == [("draft_model", 1), ("draft_model", 2)]
    for cell in doc["cells"]:
        assert cell["policies"] == ["goodput", "k=0", "k=2", "control"]
        fixed = {p: v for p, v in cell["tokens_per_second"].items() if p.startswith("k=")}
        assert cell["best_fixed"] == max(fixed, key=fixed.get)
        assert abs(cell["goodput_over_best"] * fixed[cell["best_fixed"]] - cell["tokens_per_second"]["goodput"]) < 1e-9
    trace = doc["traces"]["draft_model@1"]
    assert len(trace["depth"]) == len(trace["predicted"]) == len(trace["measured"]) and trace["depth"]
    assert doc["latency_model"]["key"]["dtype"] == "float64"  # profiled on first use, in the tiny target's setting
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cells"] == 2 and 0 <= summary["cells_within_3pct"] <= 2


def test_fixed_settings_by_drafter_shape():
    """Chains are compared with fixed depths, trees with DEPTH:NODES settings; both with plain decoding first."""
    from omegaconf import OmegaConf

    import specdec
    from specdec import drafters
    from specdec.bench.sweep import fixed_settings, speculation_of
    from specdec.heads.medusa import MedusaHeads

    cfg = OmegaConf.create({"depths": [1, 3], "trees": ["1:2", "2:3"]})
    assert fixed_settings(cfg, drafters.PromptLookup()) == ["k=0", "k=1", "k=3"]
    medusa = drafters.Medusa(MedusaHeads(8, 2), [(0,), (1,), (0, 0)])
    assert fixed_settings(cfg, medusa) == ["k=0", "k=1:2", "k=2:3"]
    assert speculation_of("goodput") is None and speculation_of("control") == 0 and speculation_of("k=3") == 3
    tree = speculation_of("k=2:3")
    assert isinstance(tree, specdec.FixedLength) and (tree.k, tree.max_nodes) == (2, 3)


def test_chunked_throughput_takes_each_chunks_median_round():
    import pytest

    from specdec.bench.sweep import chunked_throughput

    # chunk 0: a 10x hiccup in one round is ignored; chunk 1: the median of three rounds
    runs = [[(10, 1.0), (10, 10.0), (10, 1.0)], [(20, 2.0), (20, 3.0), (20, 4.0)]]
    assert chunked_throughput(runs) == pytest.approx(30 / 4.0)
    with pytest.raises(ValueError, match="at least one timed run"):
        chunked_throughput([[(10, 1.0)], []])
