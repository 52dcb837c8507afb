"""Data generation over corpus v2: self-distilled answers (train/answers.py), teacher-forced outputs (train/teacher.py).

A tiny random Llama with SmolLM2's vocabulary stands in for the target; SmolLM2's own tokenizer
and chat template (from the local model cache) tokenize a small fake corpus.
"""
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import specdec
from conftest import tiny_llama
from specdec.loading import cached_model_dir
from specdec.train import answers as answers_mod
from specdec.train import teacher as teacher_mod
from specdec.train.answers import answer, load_answers, prompt_records
from specdec.train.teacher import build_sequence, build_teacher, iter_teacher, load_teacher

EOS = [2]  # SmolLM2's <|im_end|>, and tiny_llama's eos_token_id


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(cached_model_dir("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def model(tokenizer):
    model = tiny_llama(vocab_size=len(tokenizer), dtype=torch.float32, max_pos=512)
    with torch.no_grad():  # a peaked law, so that no near-tie reorders the top k between two forwards
        model.lm_head.weight.mul_(100.0)
    return model


def record(rid, source, messages, split="train", category="chat"):
    return {"id": rid, "source": source, "category": category, "split": split,
            "has_answer": messages[-1]["role"] == "assistant", "messages": messages}


def chat(*texts, system=None):
    roles = ["user", "assistant"] * len(texts)
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": r, "content": t} for r, t in zip(roles, texts)]


def fake_corpus():
    """ShareGPT chats first in corpus order, so the selection order differs from the corpus order."""
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum old songs".split()

    def text(n, seed):
        return " ".join(words[(seed * 7 + 3 * i) % len(words)] for i in range(n))

    records = [record(f"sharegpt/c{i}/0", "sharegpt", chat(text(8, i), text(30 + i, i + 1), text(6, i + 2),
                                                           text(20, i + 3)), category="conversation")
               for i in range(6)]
    records += [
        record("maths/a/0", "maths", chat("What is 2 + 3? Solve step by step.", "2 + 3 = 5. " + text(20, 9),
                                          system="You are a careful tutor."), category="math"),
        record("sotu/b/0", "sotu", chat("Summarise: " + text(40, 4)), category="summarization"),
        record("sharegpt/d/followup", "sharegpt", chat("Hi there", text(25, 5), "And then?")),
        record("german/e/0", "german", chat("Übersetze: Ja.", "Yes."), category="translation"),  # too short
        record("sharegpt/f/0", "sharegpt", chat("Hello", "\n\nWorld " + text(20, 6))),  # breaks the prefix property
        record("humaneval/g/0", "humaneval", chat("def add(a, b):"), category="code"),  # never answered
        record("sharegpt/v/0", "sharegpt", chat(text(10, 1), text(40, 2)), split="valid"),
        record("sotu/v/0", "sotu", chat("Summarise: " + text(30, 3)), split="valid", category="summarization"),
    ]
    return records


def fake_answers(records, vocab):
    """Self-distilled answers for the prompt-only records but one (as answers.jsonl would hold them)."""
    rng = np.random.default_rng(0)
    out = {}
    for r in records:
        if not r["has_answer"] and r["source"] != "humaneval":
            ids = rng.integers(100, vocab, size=24).tolist() + EOS
            out[r["id"]] = {"id": r["id"], "answer": "", "ids": ids}
    return out


def run(model, tokenizer, out_dir, **settings):
    records = fake_corpus()
    settings = {"max_positions": None, "shard_positions": 60, "progress": False, **settings}
    return build_teacher(model, tokenizer, records, fake_answers(records, len(tokenizer)), out_dir, **settings)


def segments(mask):
    """(start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def test_answer_positions_are_exactly_the_assistant_tokens(tokenizer):
    """Each run of answer targets decodes to one assistant message plus <|im_end|>; nothing else is marked."""
    for r in fake_corpus()[:7]:
        seq = build_sequence(tokenizer, r, None, EOS, 1024, 1)
        targets = np.concatenate([[False], seq.answer[:-1]])  # token t is an answer token
        spans = [tokenizer.decode(seq.tokens[a:b]) for a, b in segments(targets)]
        assert spans == [m["content"] + "<|im_end|>" for m in r["messages"] if m["role"] == "assistant"]
        assert tokenizer.decode(seq.tokens[~targets]).count("<|im_start|>") == len(r["messages"]) + \
            (r["messages"][0]["role"] != "system")  # every header and user turn stays context


def test_self_distilled_answer_follows_the_generation_prompt(tokenizer):
    """A prompt-only record: its ids with the generation prompt, then exactly the distilled ids as answers."""
    r = fake_corpus()[8]
    distilled = [500, 600, 700] * 8 + EOS
    seq = build_sequence(tokenizer, r, distilled, EOS, 1024, 1)
    prompt = specdec.chat.encode_chat(tokenizer, r["messages"])[0].tolist()
    assert seq.tokens.tolist() == prompt + distilled and seq.distilled_from == len(prompt)
    targets = np.concatenate([[False], seq.answer[:-1]])
    assert [tokenizer.decode(seq.tokens[a:b]) for a, b in segments(targets)][0] == r["messages"][1]["content"] + \
        "<|im_end|>"
    assert targets[len(prompt):].all() and segments(targets)[-1] == (len(prompt), len(seq.tokens))


def test_skips_are_counted_and_cuts_respected(tokenizer):
    """Short answers and broken prefixes are skipped with their reason; max_length cuts the tokens."""
    records = fake_corpus()
    assert build_sequence(tokenizer, records[9], None, EOS, 1024, 16) == "short"
    assert build_sequence(tokenizer, records[10], None, EOS, 1024, 1) == "template"
    seq = build_sequence(tokenizer, records[0], None, EOS, 40, 1)
    assert len(seq.tokens) == 40 and not seq.answer[-1]


def test_stored_outputs_equal_a_direct_forward(model, tokenizer, tmp_path):
    """Top-k log-probs, argmax counts and (within float16 rounding) hidden states match model(ids)."""
    summary = run(model, tokenizer, tmp_path)
    data = load_teacher(tmp_path, "train")
    records = {r["id"]: r for r in fake_corpus()}
    answers = fake_answers(fake_corpus(), len(tokenizer))
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    for i, rid in enumerate(data["ids"]):
        a, b = data["offsets"][i: i + 2]
        p, q = data["answer_offsets"][i: i + 2]
        r = records[rid]
        seq = build_sequence(tokenizer, r, None if r["has_answer"] else answers[rid]["ids"], EOS, 1024, 16)
        assert np.array_equal(data["tokens"][a:b], seq.tokens) and np.array_equal(data["answer"][a:b], seq.answer)
        with torch.no_grad():
            out = model(torch.as_tensor(seq.tokens, dtype=torch.long)[None], output_hidden_states=True)
        hidden = out.hidden_states[-1][0].numpy()
        np.testing.assert_allclose(data["hidden"][a:b].astype(np.float32), hidden, rtol=1e-3, atol=1e-4)
        top = torch.log_softmax(out.logits[0, torch.as_tensor(seq.answer)].double(), -1).topk(32)
        assert q - p == seq.answers and np.array_equal(data["topk_ids"][p:q], top.indices.numpy())
        np.testing.assert_allclose(data["topk_logprobs"][p:q].astype(np.float64), top.values.numpy(),
                                   rtol=1e-3, atol=1e-6)
        counts += np.bincount(top.indices[:, 0].numpy(), minlength=len(tokenizer))
        if not r["has_answer"]:
            counts += np.bincount(answers[rid]["ids"], minlength=len(tokenizer))
    assert np.array_equal(np.load(tmp_path / "token_counts.npy"), counts)
    train = summary["train"]
    assert train["skipped"] == {"short": 1, "template": 1} and train["self_distilled"] == 2
    assert summary["valid"]["sequences"] == 2 and train["no_answer"] == 1 and train["complete"]


def test_order_and_position_budget(model, tokenizer, tmp_path):
    """Non-ShareGPT and self-distilled records come first; the train split stops exactly at max_positions."""
    run(model, tokenizer, tmp_path / "all")
    per_sequence = np.diff(load_teacher(tmp_path / "all", "train")["answer_offsets"])
    budget = int(per_sequence[:5].sum()) + 20  # the sixth sequence is cut to its first 20 answer positions
    summary = run(model, tokenizer, tmp_path / "cut", max_positions=budget)
    data = load_teacher(tmp_path / "cut", "train")
    assert summary["train"]["answer_positions"] == data["answer"].sum() == len(data["topk_ids"]) == budget
    assert len(data["ids"]) == 6 and not data["answer"][-1]
    short = run(model, tokenizer, tmp_path / "short", max_positions=budget - 10)  # 10 < min_answer: not cut
    assert short["train"]["answer_positions"] == budget - 20 and short["train"]["skipped"]["budget"] == 1
    assert data["ids"][:3] == ["maths/a/0", "sotu/b/0", "sharegpt/d/followup"]
    assert data["ids"][3:] == [f"sharegpt/c{i}/0" for i in range(len(data["ids"]) - 3)]
    assert all(m["meta"]["answer_positions"] >= 60 for m in list(iter_teacher(tmp_path / "cut", "train"))[:-1])


def test_teacher_resumes_after_an_interruption(model, tokenizer, tmp_path, monkeypatch):
    """Killed mid-run (and leaving a half-written shard), a rerun gives byte-identical shards, counts and plan."""
    run(model, tokenizer, tmp_path / "once", max_positions=400)
    forward, calls = teacher_mod.teacher_forward, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(teacher_mod, "teacher_forward", dying)
    with pytest.raises(KeyboardInterrupt):
        run(model, tokenizer, tmp_path / "twice", max_positions=400)
    monkeypatch.setattr(teacher_mod, "teacher_forward", forward)
    done = sorted(p.name for p in (tmp_path / "twice").glob("train-*.json"))
    assert done and len(done) < len(list((tmp_path / "once").glob("train-*.json")))
    (tmp_path / "twice" / f"train-{len(done):05d}.safetensors").write_bytes(b"half a shard")
    run(model, tokenizer, tmp_path / "twice", max_positions=400)
    names = sorted(p.name for p in (tmp_path / "once").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "twice").iterdir())
    for name in names:
        once, twice = ((tmp_path / d / name).read_bytes() for d in ("once", "twice"))
        if name.endswith(".json") and name != "plan.json":  # shard sidecars: equal but for the time taken
            once, twice = ({k: v for k, v in json.loads(x).items() if k != "seconds"} for x in (once, twice))
        assert once == twice, name
    with pytest.raises(ValueError, match="started with"):
        run(model, tokenizer, tmp_path / "twice", max_positions=500)


def test_answers_resume_and_skip_done_ids(tokenizer, tmp_path, monkeypatch):
    """An interrupted answers run (with a half-written line) resumes to the same answers as one run."""
    model = tiny_llama(vocab_size=len(tokenizer))
    records = prompt_records(fake_corpus())
    settings = {"max_new_tokens": 3, "batch_size": 2, "chunk_size": 2, "sort_window": 4, "progress": False}
    answer(model, tokenizer, records, tmp_path / "once.jsonl", **settings)
    pool, calls = specdec.generate_pool, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return pool(*args, **kwargs)

    monkeypatch.setattr(answers_mod.specdec, "generate_pool", dying)
    with pytest.raises(KeyboardInterrupt):
        answer(model, tokenizer, records, tmp_path / "twice.jsonl", **settings)
    monkeypatch.setattr(answers_mod.specdec, "generate_pool", pool)
    assert len(load_answers(tmp_path / "twice.jsonl")) == 2
    with open(tmp_path / "twice.jsonl", "a") as f:
        f.write('{"id": "half')
    stats = answer(model, tokenizer, records, tmp_path / "twice.jsonl", **settings)
    assert stats["already_done"] == 2 and stats["answered"] == len(records) - 2
    once, twice = load_answers(tmp_path / "once.jsonl"), load_answers(tmp_path / "twice.jsonl")
    lines = (tmp_path / "twice.jsonl").read_text().splitlines()
    assert len(lines) == len(records) == len(once) and once == twice
    for r in records:
        prompt = specdec.chat.encode_chat(tokenizer, r["messages"])
        expected = model.generate(prompt, max_new_tokens=3, do_sample=False)[0, prompt.shape[1]:].tolist()
        assert once[r["id"]]["ids"] == expected and once[r["id"]]["prompt_tokens"] == prompt.shape[1]
    assert json.loads(lines[0])["answer"] == tokenizer.decode(once[json.loads(lines[0])["id"]]["ids"],
                                                              skip_special_tokens=True)


def test_valid_split_first_then_train_gives_the_same_shards(model, tokenizer, tmp_path):
    """``splits=("valid",)`` builds the held-out shards alone; a later full run adds train and matches one run."""
    run(model, tokenizer, tmp_path / "once", max_positions=400)
    part = run(model, tokenizer, tmp_path / "parts", max_positions=400, splits=("valid",))
    assert set(part) >= {"valid"} and "train" not in part and not list((tmp_path / "parts").glob("train-*"))
    run(model, tokenizer, tmp_path / "parts", max_positions=400)
    for split in ("train", "valid"):
        once, parts = (load_teacher(tmp_path / d, split) for d in ("once", "parts"))
        assert once["ids"] == parts["ids"] and np.array_equal(once["topk_ids"], parts["topk_ids"])
    with pytest.raises(ValueError, match="unknown teacher splits"):
        run(model, tokenizer, tmp_path / "parts", max_positions=400, splits=("test",))


def test_bfloat16_body_stays_close_to_float32_and_is_part_of_the_plan(model, tokenizer, tmp_path):
    """The bf16-autocast body gives hidden states and laws close to float32's (not bit-equal: it did run in
    bf16), keeps the same positions, and a directory started in one precision refuses the other."""
    run(model, tokenizer, tmp_path / "f32", max_positions=300)
    run(model, tokenizer, tmp_path / "bf16", max_positions=300, body_dtype="bfloat16")
    f32, bf16 = load_teacher(tmp_path / "f32", "train"), load_teacher(tmp_path / "bf16", "train")
    assert f32["ids"] == bf16["ids"] and np.array_equal(f32["answer"], bf16["answer"])
    h32, h16 = f32["hidden"].astype(np.float32), bf16["hidden"].astype(np.float32)
    error = np.linalg.norm(h32 - h16) / np.linalg.norm(h32)
    assert 0 < error < 0.05
    assert (f32["topk_ids"][:, 0] == bf16["topk_ids"][:, 0]).mean() > 0.95
    with pytest.raises(ValueError, match="started with"):
        run(model, tokenizer, tmp_path / "bf16", max_positions=300)
    with pytest.raises(ValueError, match="body_dtype"):
        teacher_mod.teacher_forward(model, np.arange(5, dtype=np.int32), np.ones(5, bool), 4, body_dtype="float16")
