"""Bad input gets a clear error that names the problem, never a wrong answer or a hang."""
import pytest
import torch

import specdec
from conftest import tiny_llama
from specdec import drafters


@pytest.fixture(scope="module")
def target():
    return tiny_llama(64, seed=0)


IDS = torch.tensor([[5, 6, 7]])


def test_vocabulary_mismatch(target):
    """A draft model over another vocabulary is refused, naming both sizes."""
    with pytest.raises(ValueError, match=r"vocabularies differ.*32.*64"):
        specdec.generate(target, IDS, drafters.DraftModel(tiny_llama(32, seed=1)), max_new_tokens=4)


@pytest.mark.parametrize("ids,message", [
    (torch.tensor([5, 6, 7]), "2D"),
    (torch.zeros(1, 3, 2, dtype=torch.long), "2D"),
    (torch.empty(1, 0, dtype=torch.long), "empty"),
    (torch.empty(0, 3, dtype=torch.long), "empty"),
    (torch.tensor([[0.5, 1.0]]), "integer"),
    (torch.tensor([[5, 64]]), "vocabulary"),
    ([[5, 6]], "2D"),
])
def test_bad_input_ids(target, ids, message):
    with pytest.raises(ValueError, match=message):
        specdec.generate(target, ids, max_new_tokens=4)


@pytest.mark.parametrize("max_new_tokens", [0, -3, 2.5, True])
def test_bad_max_new_tokens(target, max_new_tokens):
    with pytest.raises(ValueError, match="max_new_tokens"):
        specdec.generate(target, IDS, max_new_tokens=max_new_tokens)


def test_beyond_the_context(target):
    """Asking for more tokens than the model's positions is refused before any work."""
    with pytest.raises(ValueError, match="context of 256"):
        specdec.generate(target, IDS, max_new_tokens=254)


def test_wrong_drafter_type(target):
    """Passing a model where a drafter belongs says what a drafter is."""
    with pytest.raises(TypeError, match="drafter must be a specdec.drafters.Drafter"):
        specdec.generate(target, IDS, drafter=tiny_llama(64, seed=1), max_new_tokens=4)
    with pytest.raises(TypeError, match="DraftModel needs a Hugging Face causal LM"):
        drafters.DraftModel("not a model")


def test_bad_masks_and_batches(target):
    with pytest.raises(ValueError, match="does not match"):
        specdec.generate(target, IDS, attention_mask=torch.ones(1, 2, dtype=torch.long), max_new_tokens=4)
    with pytest.raises(ValueError, match="left-padded"):
        specdec.generate(target, IDS, attention_mask=torch.tensor([[1, 1, 0]]), max_new_tokens=4)


def test_bad_sampling_settings(target):
    with pytest.raises(ValueError, match="temperature"):
        specdec.generate(target, IDS, max_new_tokens=4, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        specdec.generate(target, IDS, max_new_tokens=4, do_sample=True, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        specdec.generate(target, IDS, max_new_tokens=4, do_sample=True, top_k=-1)


def test_bad_drafter_settings(target):
    with pytest.raises(ValueError, match="num_tokens"):
        drafters.DraftModel(target, num_tokens=0)
    with pytest.raises(ValueError, match="num_layers must be between 1 and 2"):
        drafters.DraftModel.from_target_layers(target, 3)
    with pytest.raises(ValueError, match="min_ngram"):
        drafters.PromptLookup(num_tokens=3, max_ngram=0)
    with pytest.raises(ValueError, match="speculation length"):
        specdec.generate(target, IDS, drafters.PromptLookup(3), max_new_tokens=4, speculation=-1)
    with pytest.raises(TypeError, match="speculation must be"):
        specdec.generate(target, IDS, drafters.PromptLookup(3), max_new_tokens=4, speculation="fast")


def test_sampling_arguments_under_greedy_decoding_warn(target):
    with pytest.warns(UserWarning, match="temperature, top_p only apply when sampling"):
        specdec.generate(target, IDS, max_new_tokens=2, temperature=0.7, top_p=0.9)
    with pytest.warns(UserWarning, match="typical_acceptance"):
        specdec.generate(target, IDS, max_new_tokens=2, typical_acceptance=(0.09, 0.3))


def test_a_padded_batch_without_its_mask_is_refused(target):
    padded = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    with pytest.raises(ValueError, match="start with the pad token .* no attention_mask"):
        specdec.generate(target, padded, max_new_tokens=2, pad_token_id=0)
    specdec.generate(target, padded, attention_mask=torch.ones_like(padded), max_new_tokens=2, pad_token_id=0)


def test_pool_prompts_of_other_types(target):
    """A tokenizer's batch (with its mask) is read without its padding; a bare 2D tensor is refused by type."""
    from transformers import BatchEncoding

    batch = BatchEncoding({"input_ids": torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]]),
                           "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])})
    out = specdec.generate_pool(target, batch, max_new_tokens=3, eos_token_id=[])
    alone = specdec.generate(target, torch.tensor([[5, 6]]), max_new_tokens=3, eos_token_id=[])
    assert out.sequences[0].tolist() == alone.sequences[0].tolist()
    with pytest.raises(ValueError, match="2D tensor"):
        specdec.generate_pool(target, torch.tensor([[5, 6], [7, 8]]))
    with pytest.raises(ValueError, match="got str"):
        specdec.generate_pool(target, ["hello"])


def test_load_model_names_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="not a Hugging Face model directory"):
        specdec.load_model(tmp_path)
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        specdec.load_model("no-such-model")


@pytest.mark.slow
def test_load_model_takes_a_hub_id_from_a_local_cache(tmp_path):
    """Offline, a Hub id resolves through a locally populated Hugging Face cache."""
    import subprocess
    import sys

    from specdec.bench.targets import tiny_target

    model, tokenizer = tiny_target(num_layers=1, hidden=16)
    snapshot = tmp_path / "hub" / "models--someone--tiny-llama" / "snapshots" / "0123abcd"
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (tmp_path / "hub" / "models--someone--tiny-llama" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-llama" / "refs" / "main").write_text("0123abcd")
    code = "import specdec; m, t = specdec.load_model('someone/tiny-llama'); print(m.config.hidden_size, len(t))"
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["16", str(len(tokenizer))]
