"""Bad input at every public entry point: a clear error of the right type that names the argument.

One row per case: the entry point, what is wrong, the call, the error type, and the words the
message must hold (the argument's name first).  ``python tests/test_bad_input.py`` prints the table
of messages a user sees.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import specdec  # noqa: E402
from conftest import tiny_llama  # noqa: E402
from specdec import drafters  # noqa: E402

TARGET = tiny_llama(64, seed=0)
OTHER = tiny_llama(32, seed=1)
IDS = torch.tensor([[5, 6, 7]])


def gen(**kw):
    args = {"max_new_tokens": 4, **kw}
    ids = args.pop("input_ids", IDS)
    drafter = args.pop("drafter", None)
    return lambda: specdec.generate(TARGET, ids, drafter, **args)


def pool(prompts, **kw):
    return lambda: specdec.generate_pool(TARGET, prompts, **{"max_new_tokens": 4, **kw})


def corrupt_artifact(tmp: Path) -> Path:
    """A Chimera card made for TARGET's shapes beside a truncated safetensors file."""
    from specdec.heads.chimera import ChimeraConfig

    folder = tmp / "broken-chimera"
    folder.mkdir()
    config = ChimeraConfig.from_target(TARGET.config, 16).as_dict()
    (folder / "card.json").write_text(json.dumps({"kind": "chimera", "target": "tiny", "config": config,
                                                  "tree": {"depth": 1, "branch": 1, "width": 1, "max_nodes": 1}}))
    (folder / "chimera.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    return folder


def foreign_profile(tmp: Path) -> Path:
    """A latency profile whose key says it was made on another machine."""
    from specdec.policy.latency import LatencyModel, Regression, latency_key

    key = {**latency_key(TARGET), "machine": "some other CPU"}
    return LatencyModel(key, Regression("linear", [0.01], 1.0)).save(tmp / "profile.json")


def cli(*argv):
    """``specdec`` on the command line: its exit message, or what argparse printed, as the error's text."""
    import contextlib
    import io

    from specdec.cli import main

    def call():
        printed = io.StringIO()
        with contextlib.redirect_stderr(printed):
            try:
                main(list(argv))
            except SystemExit as error:
                raise SystemExit(error.code if isinstance(error.code, str) else printed.getvalue()) from None
    return call


def bench(*overrides):
    """``python -m specdec.bench <overrides>`` up to the point where it would load the target."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from specdec.bench.app import check_config, select_methods

    def call():
        GlobalHydra.instance().clear()
        with initialize_config_module("specdec.configs", version_base="1.3"):
            cfg = compose("bench", overrides=list(overrides))
            loader = GlobalHydra.instance().config_loader()
            check_config(cfg)
            select_methods(cfg.methods, None, cfg.baseline, loader.get_group_options("drafter"),
                           loader.get_group_options("method"))
    return call


CASES = [
    # entry point, input, call(tmp), error, words the message holds
    ("generate", "1D input_ids", lambda t: gen(input_ids=torch.tensor([5, 6])), ValueError, ["input_ids", "2D"]),
    ("generate", "3D input_ids", lambda t: gen(input_ids=torch.zeros(1, 2, 2, dtype=torch.long)), ValueError,
     ["input_ids", "2D"]),
    ("generate", "a list, not a tensor", lambda t: gen(input_ids=[[5, 6]]), ValueError, ["input_ids"]),
    ("generate", "float token ids", lambda t: gen(input_ids=torch.tensor([[0.5, 1.0]])), ValueError,
     ["input_ids", "integer"]),
    ("generate", "empty prompt", lambda t: gen(input_ids=torch.empty(1, 0, dtype=torch.long)), ValueError,
     ["input_ids", "empty"]),
    ("generate", "empty batch", lambda t: gen(input_ids=torch.empty(0, 3, dtype=torch.long)), ValueError,
     ["input_ids", "empty"]),
    ("generate", "token id >= vocabulary", lambda t: gen(input_ids=torch.tensor([[5, 64]])), ValueError,
     ["input_ids", "vocabulary"]),
    ("generate", "negative token id", lambda t: gen(input_ids=torch.tensor([[5, -1]])), ValueError,
     ["input_ids", "vocabulary"]),
    ("generate", "eos_token_id outside the vocabulary", lambda t: gen(eos_token_id=99), ValueError,
     ["eos_token_id", "vocabulary"]),
    ("generate", "pad_token_id outside the vocabulary", lambda t: gen(pad_token_id=-5), ValueError,
     ["pad_token_id", "vocabulary"]),
    ("generate", "mask of another shape", lambda t: gen(attention_mask=torch.ones(1, 2, dtype=torch.long)),
     ValueError, ["attention_mask", "does not match"]),
    ("generate", "right-padded mask", lambda t: gen(attention_mask=torch.tensor([[1, 1, 0]])), ValueError,
     ["attention_mask", "left-padded"]),
    ("generate", "mask of values other than 0/1", lambda t: gen(attention_mask=torch.tensor([[0.5, 1.0, 1.0]])),
     ValueError, ["attention_mask", "0 and 1"]),
    ("generate", "padded batch without a mask",
     lambda t: gen(input_ids=torch.tensor([[0, 0, 5], [7, 8, 9]]), pad_token_id=0), ValueError,
     ["attention_mask", "pad token"]),
    ("generate", "length beyond the context", lambda t: gen(max_new_tokens=254), ValueError,
     ["max_new_tokens", "context of 256"]),
    ("generate", "max_new_tokens = 0", lambda t: gen(max_new_tokens=0), ValueError, ["max_new_tokens"]),
    ("generate", "max_new_tokens a float", lambda t: gen(max_new_tokens=2.5), ValueError, ["max_new_tokens"]),
    ("generate", "temperature 0 when sampling", lambda t: gen(do_sample=True, temperature=0.0), ValueError,
     ["temperature"]),
    ("generate", "negative temperature", lambda t: gen(do_sample=True, temperature=-1.0), ValueError,
     ["temperature"]),
    ("generate", "top_p above 1", lambda t: gen(do_sample=True, top_p=1.5), ValueError, ["top_p"]),
    ("generate", "negative top_k", lambda t: gen(do_sample=True, top_k=-1), ValueError, ["top_k"]),
    ("generate", "seed of the wrong type", lambda t: gen(do_sample=True, seed="abc"), TypeError, ["seed"]),
    ("generate", "unknown keyword", lambda t: gen(max_length=9), TypeError, ["max_length", "unknown"]),
    ("generate", "a model where the drafter goes", lambda t: gen(drafter=OTHER), TypeError, ["drafter"]),
    ("generate", "drafter of another vocabulary", lambda t: gen(drafter=drafters.DraftModel(OTHER)), ValueError,
     ["vocabularies differ", "32", "64"]),
    ("generate", "negative speculation", lambda t: gen(drafter=drafters.PromptLookup(3), speculation=-1),
     ValueError, ["speculation"]),
    ("generate", "speculation of the wrong type", lambda t: gen(drafter=drafters.PromptLookup(3), speculation="x"),
     TypeError, ["speculation"]),
    ("generate", "config of the wrong type", lambda t: gen(config={"max_new_tokens": 4}), TypeError, ["config"]),
    ("generate_pool", "empty pool", lambda t: pool([]), ValueError, ["prompts", "non-empty"]),
    ("generate_pool", "an empty prompt", lambda t: pool([[5, 6], []]), ValueError, ["prompt 1"]),
    ("generate_pool", "token id outside the vocabulary", lambda t: pool([[5, 6], [70]]), ValueError,
     ["prompt 1", "vocabulary"]),
    ("generate_pool", "a string prompt", lambda t: pool(["hello"]), ValueError, ["prompt 0", "str"]),
    ("generate_pool", "a padded 2D tensor", lambda t: pool(torch.tensor([[5, 6], [7, 8]])), ValueError,
     ["prompts", "2D tensor"]),
    ("generate_pool", "batch_size 0", lambda t: pool([[5, 6]], batch_size=0), ValueError, ["batch_size"]),
    ("generate_pool", "unknown schedule", lambda t: pool([[5, 6]], schedule="fifo"), ValueError, ["schedule"]),
    ("DecodeConfig", "max_new_tokens -1", lambda t: lambda: specdec.DecodeConfig(max_new_tokens=-1), ValueError,
     ["max_new_tokens"]),
    ("DecodeConfig", "unknown field", lambda t: lambda: specdec.DecodeConfig(max_len=3), TypeError, ["max_len"]),
    ("DecodeConfig", "typical_acceptance not a pair", lambda t: lambda: specdec.DecodeConfig(typical_acceptance=3),
     ValueError, ["typical_acceptance"]),
    ("PromptLookup", "num_tokens 0", lambda t: lambda: drafters.PromptLookup(num_tokens=0), ValueError,
     ["num_tokens"]),
    ("PromptLookup", "max_ngram 0", lambda t: lambda: drafters.PromptLookup(max_ngram=0), ValueError,
     ["ngram"]),
    ("DraftModel", "not a model", lambda t: lambda: drafters.DraftModel("gpt2"), TypeError, ["DraftModel"]),
    ("DraftModel", "num_tokens 0", lambda t: lambda: drafters.DraftModel(TARGET, num_tokens=0), ValueError,
     ["num_tokens"]),
    ("DraftModel.from_target_layers", "more layers than the target",
     lambda t: lambda: drafters.DraftModel.from_target_layers(TARGET, 3), ValueError, ["num_layers"]),
    ("Hybrid", "a model where the drafter goes", lambda t: lambda: drafters.Hybrid(OTHER), TypeError, ["model"]),
    ("Hybrid", "copy_tokens 0", lambda t: lambda: drafters.Hybrid(drafters.DraftModel(TARGET), copy_tokens=0),
     ValueError, ["copy_tokens"]),
    ("RecursiveTree", "unknown method",
     lambda t: lambda: drafters.RecursiveTree(TARGET, method="beamish"), ValueError, ["method"]),
    ("drafters.load", "missing folder", lambda t: lambda: drafters.load(t / "nothing-here", TARGET),
     FileNotFoundError, ["nothing-here"]),
    ("drafters.load", "another target's artifact", lambda t: lambda: drafters.load("chimera-smollm2-135m-instruct",
                                                                                    TARGET), ValueError,
     ["trained for", "hidden_size", "vocab_size"]),
    ("drafters.load", "corrupted safetensors", lambda t: lambda: drafters.load(corrupt_artifact(t), TARGET),
     ValueError, ["chimera.safetensors"]),
    ("Medusa.from_pretrained", "a folder without heads", lambda t: lambda: drafters.Medusa.from_pretrained(t, TARGET),
     FileNotFoundError, ["medusa.safetensors"]),
    ("load_model", "unknown name", lambda t: lambda: specdec.load_model("no-such-model"), ValueError,
     ["no-such-model", "known names"]),
    ("load_model", "a folder that is no model", lambda t: lambda: specdec.load_model(t), ValueError,
     ["config.json"]),
    ("load_model", "an integer dtype", lambda t: lambda: specdec.load_model("smollm2-135m-instruct", dtype="int8"),
     ValueError, ["dtype"]),
    ("SmartSpec", "max_depth 0", lambda t: lambda: specdec.SmartSpec(max_depth=0), ValueError, ["max_depth"]),
    ("SmartSpec", "prior above 1", lambda t: lambda: specdec.SmartSpec(prior=1.5), ValueError, ["prior"]),
    ("SmartSpec", "latency of the wrong type", lambda t: lambda: specdec.SmartSpec(latency=3), TypeError,
     ["latency"]),
    ("SmartSpec", "a latency profile from another machine",
     lambda t: gen(drafter=drafters.PromptLookup(3), speculation=specdec.SmartSpec(latency=foreign_profile(t))),
     ValueError, ["latency", "machine"]),
    ("CLI", "--max-new-tokens 0", lambda t: cli("--max-new-tokens", "0", "hi"), SystemExit, ["--max-new-tokens"]),
    ("CLI", "unknown drafter", lambda t: cli("--drafter", "nope", "hi"), SystemExit, ["--drafter", "nope"]),
    ("CLI", "--speculation fast", lambda t: cli("--speculation", "fast", "hi"), SystemExit, ["--speculation"]),
    ("CLI", "--temperature 0 when sampling", lambda t: cli("--sample", "--temperature", "0", "hi"), SystemExit,
     ["--temperature"]),
    ("CLI", "--max-new-tokens not a number", lambda t: cli("--max-new-tokens", "many", "hi"), SystemExit,
     ["--max-new-tokens", "many"]),
    ("CLI", "unknown model", lambda t: cli("--model", "no-such-model", "hi"), SystemExit, ["no-such-model"]),
    ("CLI", "a --chat file that is missing", lambda t: cli("--chat", str(t / "none.json")), SystemExit,
     ["--chat", "none.json"]),
    ("bench config", "max_new_tokens=0", lambda t: bench("max_new_tokens=0"), ValueError, ["max_new_tokens"]),
    ("bench config", "unknown method", lambda t: bench("methods=[specdec_nope]"), ValueError,
     ["unknown methods", "specdec_nope"]),
    ("bench config", "temperature 0 when sampling", lambda t: bench("do_sample=true", "temperature=0"), ValueError,
     ["temperature"]),
    ("bench config", "speculation=fast", lambda t: bench("speculation=fast"), ValueError, ["speculation"]),
    ("bench config", "repeats=0", lambda t: bench("repeats=0"), ValueError, ["repeats"]),
]


@pytest.mark.parametrize("entry,case,call,error,words", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_input_gets_a_clear_error(entry, case, call, error, words, tmp_path):
    with pytest.raises(error) as caught:
        call(tmp_path)()
    message = str(caught.value)
    for word in words:
        assert word in message, f"{entry} / {case}: {message!r} lacks {word!r}"


# -- what is refused must not refuse what is right ---------------------------------------------------

def test_sampling_arguments_under_greedy_decoding_warn():
    with pytest.warns(UserWarning, match="temperature, top_p only apply when sampling"):
        specdec.generate(TARGET, IDS, max_new_tokens=2, temperature=0.7, top_p=0.9)
    with pytest.warns(UserWarning, match="typical_acceptance"):
        specdec.generate(TARGET, IDS, max_new_tokens=2, typical_acceptance=(0.09, 0.3))


def test_a_padded_batch_without_its_mask_is_refused():
    padded = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    with pytest.raises(ValueError, match="start with the pad token .* no attention_mask"):
        specdec.generate(TARGET, padded, max_new_tokens=2, pad_token_id=0)
    specdec.generate(TARGET, padded, attention_mask=torch.ones_like(padded), max_new_tokens=2, pad_token_id=0)


def test_pool_prompts_of_other_types():
    """A tokenizer's batch (with its mask) is read without its padding; a bare 2D tensor is refused by type."""
    from transformers import BatchEncoding

    batch = BatchEncoding({"input_ids": torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]]),
                           "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])})
    out = specdec.generate_pool(TARGET, batch, max_new_tokens=3, eos_token_id=[])
    alone = specdec.generate(TARGET, torch.tensor([[5, 6]]), max_new_tokens=3, eos_token_id=[])
    assert out.sequences[0].tolist() == alone.sequences[0].tolist()
    with pytest.raises(ValueError, match="2D tensor"):
        specdec.generate_pool(TARGET, torch.tensor([[5, 6], [7, 8]]))
    with pytest.raises(ValueError, match="got str"):
        specdec.generate_pool(TARGET, ["hello"])


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


def test_the_default_profile_of_another_machine_is_made_again(tmp_path, monkeypatch, caplog):
    """A copied or shared cache holds another machine's profile at the default path: profiled again, not used."""
    from specdec.policy.latency import LatencyModel, default_path, latency_key
    from specdec.policy.profiling import latency_for

    monkeypatch.setenv("SPECDEC_PROFILES", str(tmp_path))
    path = default_path(latency_key(TARGET))
    foreign_profile(tmp_path).rename(path)
    with caplog.at_level("WARNING"):
        latency = latency_for(TARGET, {})
    assert "does not fit this setting" in caplog.text
    assert latency.key == latency_key(TARGET) == LatencyModel.load(path).key


if __name__ == "__main__":  # the table of what a user sees
    import tempfile

    print("| entry point | input | error |\n|---|---|---|")
    for entry, case, call, error, _ in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                call(Path(tmp))()
                seen = "NO ERROR"
            except (Exception, SystemExit) as caught:  # noqa: BLE001
                lines = [line for line in str(caught).splitlines() if line.strip()]
                shown = lines[-1] if lines[0].startswith("usage:") else lines[0]  # argparse: its error line
                seen = f"{type(caught).__name__}: {shown[:160]}"
        print(f"| `{entry}` | {case} | {seen.replace('|', '/')} |")
