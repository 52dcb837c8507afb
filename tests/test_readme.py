"""The README's Python examples run as written (on the packaged model), so they cannot rot."""
import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # subprocesses or the real model: seconds each

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run_in_order(capsys):
    """Every ```python block runs, in order, in the namespace the blocks before it left (as a reader pastes them)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for index, code in enumerate(blocks):
        with torch.inference_mode():
            exec(compile(code, f"README.md python block {index}", "exec"), namespace)
