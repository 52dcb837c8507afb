"""What each part installs and imports: the runtime needs no training or benchmark packages."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "flax", "optax", "hydra", "omegaconf", "matplotlib")


@pytest.mark.slow
def test_the_runtime_imports_no_training_or_benchmark_packages():
    """Decoding with every drafter kind (Medusa heads included) loads none of jax, flax, optax, hydra, matplotlib."""
    code = f"""
import sys, torch
sys.path.insert(0, {str(ROOT / 'tests')!r})
import specdec
from specdec import drafters
from specdec.heads.medusa import MedusaHeads
from conftest import tiny_llama
model = tiny_llama(32)
ids = torch.tensor([[3, 4, 5, 3, 4]])
for drafter in (None, drafters.PromptLookup(), drafters.DraftModel(model, 2), drafters.RecursiveTree(model, (2, 1)),
                drafters.Medusa(MedusaHeads(32, 2).double(), [(0,), (0, 0)])):
    specdec.generate(model, ids, drafter, max_new_tokens=4)
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})
print(loaded)
assert not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_training_code_does_not_import_the_benchmark():
    for path in sorted((ROOT / "train").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.startswith("specdec.bench") for n in names), f"{path.name} imports {names}"
