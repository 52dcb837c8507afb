"""The cost command's step breakdown times the forward the engine really runs."""
import torch

from conftest import tiny_llama
from specdec import drafters
from specdec.bench import costs


def test_the_step_breakdown_counts_the_backbone_the_engine_runs():
    """On a model the lean forward serves (Hugging Face's decoder is never called), the backbone is most of a step;
    a breakdown that hooked the Hugging Face decoder instead would read 0 here, and fail."""
    model = tiny_llama(256, hidden=256, num_layers=4, heads=4, kv_heads=2, dtype=torch.float32)
    calls = []
    model.get_decoder().register_forward_pre_hook(lambda *a: calls.append(1))
    ids = torch.randint(3, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        parts = costs.step_breakdown(model, ids, drafters.PromptLookup(), 12, speculation=2)
    assert not calls  # the engine ran its own forward
    assert parts["backbone_ms"] > 0.3 * parts["step_ms"]
    assert parts["head_ms"] > 0 and parts["rest_ms"] > 0
    total = parts["backbone_ms"] + parts["head_ms"] + parts["draft_ms"] + parts["rest_ms"]
    assert abs(total - parts["step_ms"]) < 1e-9
