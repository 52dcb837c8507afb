"""One loader per artifact: every packaged drafter loads from its card and decodes exactly; a wrong target is
refused by name; the CLI picks the fastest packaged drafter for its model, else prompt lookup; and the
artifacts install with the package."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from transformers import LlamaConfig, LlamaForCausalLM

import specdec
from specdec import drafters
from specdec.cli import build_drafter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smollm2_shaped():
    """A one-layer random model with SmolLM2-135M's sizes and name: what the packaged artifacts fit."""
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    model.config._name_or_path = "/somewhere/smollm2-135m-instruct"
    return model


def test_every_packaged_artifact_loads_from_its_card_and_decodes_exactly(smollm2_shaped):
    names = [name for name, _ in drafters.packaged_for(smollm2_shaped)]  # those made for this target
    assert {"chimera-smollm2-135m-instruct", "medusa-smollm2-135m-instruct", "draft-smollm2-135m-instruct"} == set(names)
    ids = torch.tensor([[5, 6, 7, 8, 5, 6]])
    want = smollm2_shaped.generate(ids, max_new_tokens=6, do_sample=False)
    kinds = {"chimera": drafters.Chimera, "medusa": drafters.Medusa, "draft": drafters.DraftModel}
    for name in names:
        drafter = drafters.load(name, smollm2_shaped)
        assert isinstance(drafter, kinds[name.split("-")[0]])
        out = specdec.generate(smollm2_shaped, ids, drafter, max_new_tokens=6, eos_token_id=[], speculation=1)
        assert torch.equal(out.sequences, want), name
    chimera = drafters.load("chimera-smollm2-135m-instruct", smollm2_shaped)
    assert chimera.draft.head.weight.dtype == torch.float16  # the card's serving precision
    assert drafters.load("chimera-smollm2-135m-instruct", smollm2_shaped, dtype="float32").draft.head.weight.dtype \
        == torch.float32  # an override wins
    again = drafters.Chimera.from_pretrained("artifacts/chimera-smollm2-135m-instruct", smollm2_shaped)
    assert (again.max_depth, again.branch, again.width, again.num_nodes) == \
        (chimera.max_depth, chimera.branch, chimera.width, chimera.num_nodes)  # from_pretrained: the same defaults
    assert drafters.load("medusa-smollm2-135m-instruct", smollm2_shaped).dtype == torch.bfloat16
    assert drafters.load("draft-smollm2-135m-instruct", smollm2_shaped).num_tokens == 4


def test_a_mismatched_target_or_artifact_is_refused_by_name(tmp_path):
    small = tiny_llama(64)
    with pytest.raises(ValueError, match=r"trained for 'smollm2-135m-instruct'.*hidden_size 576 \(this target: 32\)"):
        drafters.load("chimera-smollm2-135m-instruct", small)
    with pytest.raises(FileNotFoundError, match="not found.*packaged artifacts"):
        drafters.load("chimera-nonexistent", small)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        drafters.load(tmp_path, small)
    (tmp_path / "card.json").write_text('{"kind": "eagle7"}')
    with pytest.raises(ValueError, match="kind 'eagle7'"):
        drafters.load(tmp_path, small)
    with pytest.raises(ValueError, match="self_draft_layers"):
        drafters.load(None, small)
    with pytest.raises(TypeError, match="causal LM"):
        drafters.load("chimera-smollm2-135m-instruct", "smollm2")


def test_the_cli_picks_the_fastest_packaged_drafter_else_prompt_lookup(smollm2_shaped):
    drafter, why = build_drafter("auto", smollm2_shaped, "smollm2-135m-instruct", None)
    best = drafters.packaged_for(smollm2_shaped)[0][0]
    assert best in why and "fastest drafter packaged for this model" in why
    assert isinstance(drafter, drafters.Hybrid) and "copies merged with" in why
    assert type(drafter.model).__name__ == {"chimera": "Chimera", "medusa": "Medusa", "draft": "DraftModel"}[best.split("-")[0]]
    tiny = tiny_llama(64)
    tiny.config._name_or_path = "/models/tiny"
    drafter, why = build_drafter("auto", tiny, "tiny", None)
    assert isinstance(drafter, drafters.PromptLookup) and "no drafter is packaged for 'tiny'" in why
    assert isinstance(drafters.auto(tiny), drafters.PromptLookup)
    assert build_drafter("none", tiny_llama(64), "tiny", None) == (None, "none (plain decoding)")


def test_the_default_merges_copies_with_the_packaged_drafter_unless_copying_alone_won(monkeypatch):
    """The default is the hybrid of copies and the packaged drafter its card ranks first; prompt lookup alone
    where that card measured it faster than the model (a target that repeats itself)."""
    from specdec.drafters import artifacts

    tiny = tiny_llama(64)
    cards = [("chimera-x", {"measured": {"speed_over_plain": 1.1, "prompt_lookup_over_plain": 1.6}}),
             ("draft-x", {"measured": {"speed_over_plain": 1.0}})]
    monkeypatch.setattr(artifacts, "packaged_for", lambda target: cards)
    monkeypatch.setattr(artifacts, "load", lambda name, target: drafters.DraftModel(tiny, num_tokens=1 + (name == "chimera-x")))
    drafter, why = artifacts.choose(tiny)
    assert isinstance(drafter, drafters.PromptLookup) and "1.60x" in why and "chimera-x" in why
    cards[0][1]["measured"]["prompt_lookup_over_plain"] = 1.0
    drafter, why = artifacts.choose(tiny)
    assert isinstance(drafter, drafters.Hybrid) and drafter.model.num_tokens == 2  # the first card's
    assert "copies merged with chimera-x" in why and "1.10x" in why and "draft-x" in why


@pytest.mark.slow
def test_artifacts_install_with_the_package_and_load_from_any_directory(tmp_path):
    """A non-editable install, imported from another directory, finds every packaged artifact by name."""
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    code = ("import specdec, pathlib; from specdec import drafters; "
            "from specdec.drafters.artifacts import resolve; "
            "assert pathlib.Path(specdec.__file__).is_relative_to(pathlib.Path(r'%s')), specdec.__file__; "
            "print(sorted(drafters.packaged())); print(resolve('chimera-smollm2-135m-instruct'))" % target)
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "chimera-smollm2-135m-instruct" in run.stdout and str(target) in run.stdout.splitlines()[-1]
