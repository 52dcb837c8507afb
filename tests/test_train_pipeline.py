"""The one-command training pipeline on a user's own model: a tiny random Llama saved as an HF directory.

Every stage runs as the pipeline runs it (child processes, Hydra overrides), at toy sizes, on a
small corpus of the corpus format; the artifact must then draft for the target and decode exactly
its greedy ``generate``; a rerun skips every stage.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch

import specdec
from specdec import drafters
from specdec.bench.targets import tiny_target
from specdec.chat import encode_chat
from specdec.train.pipeline import target_overrides

WORDS = ("the river runs to the sea and the sea gives back rain which feeds the river again while "
         "boats carry grain and wood between towns that grew along its banks").split()


def sentence(rng: random.Random, n: int) -> str:
    start = rng.randrange(len(WORDS))
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n))


def tiny_corpus(path) -> None:
    rng = random.Random(0)
    rows = []
    for i in range(40):
        split = "valid" if i % 8 == 0 else "train"
        user = {"role": "user", "content": "Continue: " + sentence(rng, 6)}
        if i % 3:
            messages = [user, {"role": "assistant", "content": sentence(rng, 30)}]
        else:
            messages = [user]
        rows.append({"id": f"toy/{i}/0", "source": "toy", "category": "conversation", "split": split,
                     "has_answer": len(messages) == 2, "messages": messages})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_target_argument_accepts_configs_and_directories(tmp_path):
    assert target_overrides(["target=gemma3", "x=1"]) == ["target=gemma3", "x=1"]
    out = target_overrides([f"target={tmp_path}/My Model/"])
    assert out == ["target=hf", "target.name=my-model", f"target.load.name_or_path={tmp_path}/My Model/"]


def test_a_base_model_is_taught_on_plain_transcripts_whose_answers_are_the_assistant_text():
    from specdec.bench.targets import byte_tokenizer
    from specdec.train.corpus_build import TokenCounter
    from specdec.train.teacher import answer_flags

    tokenizer = byte_tokenizer()
    tokenizer.chat_template = None  # a base model's tokenizer
    chat = [{"role": "user", "content": "Tell me."}, {"role": "assistant", "content": "A cat sat."},
            {"role": "user", "content": "Shorter?"}, {"role": "assistant", "content": "Cat sat."}]
    ids, flags = answer_flags(tokenizer, chat, [tokenizer.eos_token_id])
    assert tokenizer.decode(ids) == "User: Tell me.\n\nAssistant: A cat sat.\n\nUser: Shorter?\n\nAssistant: Cat sat."
    assert tokenizer.decode([t for t, f in zip(ids, flags) if f]) == " A cat sat. Cat sat."
    prompt = encode_chat(tokenizer, chat[:1])[0].tolist()
    assert tokenizer.decode(prompt) == "User: Tell me.\n\nAssistant:"  # what the answers stage continues
    assert TokenCounter(tokenizer).chat(chat, False)[0] == len(ids)


@pytest.mark.slow
def test_pipeline_trains_a_chimera_for_an_hf_directory_that_decodes_exactly(tmp_path):
    model_dir, work, export = tmp_path / "model", tmp_path / "work", tmp_path / "chimera"
    model, tokenizer = tiny_target(num_layers=2, hidden=32, dtype="float32")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    tiny_corpus(tmp_path / "corpus.jsonl")
    command = [sys.executable, "-m", "specdec.train.pipeline", f"target={model_dir}", "drafter=chimera",
               f"corpus={tmp_path / 'corpus.jsonl'}", f"work_dir={work}", f"export_dir={export}",
               "target.num_threads=1", "sizes.prompts=6", "sizes.answer_tokens=24", "sizes.answer_batch=4",
               "sizes.positions=1500", "sizes.valid_positions=300", "sizes.vocab_size=64", "sizes.steps=4",
               "bench.max_new_tokens=8", "bench.repeats=1",
               "+target.load.dtype=float64",  # exact greedy equality on a random model's near-flat logits
               "overrides.teacher=['min_answer=4','shard_positions=1000']",
               "overrides.train=['row_length=128','answers_per_row=32','eval_rows=2','optim.eval_every=2',"
               "'optim.warmup_steps=1','measure.per_category=1','measure.max_new_tokens=8']"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    card = json.loads((export / "card.json").read_text())
    assert card["target"] == "model" and card["training"]["steps"] == 4
    assert set(card["pipeline"]["stages"]) == {"answers", "teacher", "train", "bench"}  # the corpus was given
    assert card["pipeline"]["bench"]["equal"] is True
    assert (work / "answers" / "answers.jsonl").is_file() and (work / "teacher" / "teacher.json").is_file()

    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("complete, skipped") + again.stdout.count("complete, skipped") == 5
    plan = subprocess.run(command + ["--plan"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert plan.stdout.count(" complete") == 5 and "left to run: about 0 s" in plan.stdout, plan.stdout

    target, _ = specdec.load_model(model_dir, dtype=torch.float64)
    ids = encode_chat(tokenizer, [{"role": "user", "content": "Continue: the river"}])
    with torch.inference_mode():
        expected = target.generate(ids, max_new_tokens=20, do_sample=False)
        got = specdec.generate(target, ids, drafters.load(export, target), max_new_tokens=20)
    assert torch.equal(got.sequences, expected)


def test_the_plan_estimates_with_the_train_stage_overrides():
    """--plan sizes the training step from the same overrides the train stage will get."""
    from omegaconf import OmegaConf

    from specdec.train.plan import with_overrides

    base = OmegaConf.create({"row_length": 512, "optim": {"learning_rate": 1.0}})
    out = with_overrides(base, ["row_length=128", "+optim.extra=2", "~optim.learning_rate"])
    assert out.row_length == 128 and out.optim.extra == 2 and out.optim.learning_rate == 1.0
    assert with_overrides(base, []) is base
