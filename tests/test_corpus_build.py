"""Corpus v2 build: record-by-record parsing, windows and chunks, checks, splits, determinism and the file format.

Tiny fake texts stand in for every package (their loaders are monkeypatched) and a word tokenizer
stands in for SmolLM2's, so nothing is installed or downloaded.
"""
import json
import random

import pytest
from omegaconf import OmegaConf

from specdec.train import corpus_build as cb
from specdec.train.corpus_card import write_card
from specdec.train.sources import catalogues, chunk_paragraphs, german, humaneval, maths, pydocs, sharegpt, sotu


class WordTokenizer:
    """One token per word; a ChatML-like template: 2 tokens per message header, 5 for the default system prompt."""

    chat_template = "one token per word"  # has a template: not a base model's plain transcript

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False, return_dict=False):
        n = (0 if messages[0]["role"] == "system" else 5) + sum(2 + len(m["content"].split()) for m in messages)
        return list(range(n + (1 if add_generation_prompt else 0)))


def conv(cid, *turns):
    return {"id": cid, "conversations": [{"from": f, "value": v} for f, v in turns]}


SHAREGPT = [
    conv("aaa_1", ("human", "And the second question about rivers?"), ("gpt", "Rivers flow downhill to the sea.")),
    conv("aaa_0", ("human", "Tell me about lakes please."), ("gpt", "Lakes hold fresh water in basins.")),
    conv("bbb_0", ("human", "Write a poem about FORBIDDEN autumn leaves."), ("gpt", "Leaves fall, red and gold.")),
    conv("ccc_0", ("human", "Why is the sea salty?"), ("gpt", "Rivers carry dissolved salts into it.")),
    conv("ddd_0", ("human", "Explain recursion in Python with code."),
         ("gpt", "```python\ndef f(n):\n    return n\n```")),
    conv("eee_0", ("human", "Say hi"), ("gpt", "x" * 300), ("human", "Now a word about clouds."),
         ("gpt", "Clouds are water droplets.")),
    conv("fff_0", ("human", "안녕하세요 오늘 날씨가 어때요"), ("gpt", "오늘은 맑고 따뜻합니다")),
]
SHAREGPT_TEXT = json.dumps(SHAREGPT, indent=1) + "\n"
TRUNCATED = SHAREGPT_TEXT[:-1].rstrip("]\n") + ',\n {"id": "zzz_0", "conversations": [{"from": "human", "va'

PO = '''msgid ""
msgstr "Content-Type: text/plain; charset=UTF-8\\n"

#: a.py:1
msgid "Enter a valid value."
msgstr "Bitte einen gültigen Wert eingeben."

#, fuzzy
msgid "This one is fuzzy today."
msgstr "Das ist unscharf."

msgid ""
"A long message "
"on two lines."
msgstr ""
"Eine lange Nachricht "
"auf zwei Zeilen."

msgid "One item was deleted."
msgid_plural "%(n)s items were deleted."
msgstr[0] "Ein Eintrag wurde gelöscht."
msgstr[1] "%(n)s Einträge wurden gelöscht."

msgid "Not translated at all."
msgstr ""
'''


def speech_text(year):
    paras = [" ".join(f"In {year} the nation built word{i}x{j} roads and Harbor Works." for j in range(6))
             for i in range(30)]
    return "\n\n".join(paras)


@pytest.fixture
def fake_packages(monkeypatch):
    """Every source's package loader replaced by a few lines of fake text."""
    monkeypatch.setattr(sharegpt, "load_text", lambda: TRUNCATED)
    monkeypatch.setattr(sotu, "load_speeches", lambda: [
        {"fileid": f"{y}-Smith-1", "year": str(y), "president_full": f"Jo Smith {y}", "party": "X",
         "text": speech_text(y)} for y in (1901, 1902)])
    monkeypatch.setattr(pydocs, "topics", lambda: [("with", 'The "with" statement',
                                                    "\n\n".join(f'The "with" statement wraps block {i} ' * 8
                                                                for i in range(12)))])
    monkeypatch.setattr(pydocs, "docstrings", lambda min_words: [("heapq", "", "Heap queue algorithm. " * 40),
                                                                 ("heapq", "merge", "Merge sorted inputs. " * 40)])
    monkeypatch.setattr(humaneval, "load_problems", lambda: [
        {"task_id": "HumanEval/0", "prompt": 'def add(a, b):\n    """Add two numbers."""\n'}])
    monkeypatch.setattr(german, "load_content", lambda: {
        "dialogues": [{"dialogue_id": "bakery", "lines": [
            {"speaker": "Verkäuferin", "de": "Guten Morgen! Was darf es sein?",
             "en": "Good morning! What can I get you?"},
            {"speaker": "Du", "de": "Ein Brötchen, bitte.", "en": "A bread roll, please."}]}],
        "packs": [{"phrases": [{"de": "Ich bin heute sehr müde.", "en": "I am very tired today. (informal)"}]}]})
    monkeypatch.setattr(catalogues, "load_catalogues", lambda packages, languages: {"de": [PO]})


def config(**overrides):
    cfg = OmegaConf.load(cb.Path(cb.__file__).parent.parent / "configs" / "train" / "corpus.yaml")
    del cfg["defaults"], cfg["hydra"]
    cfg.tokenizer, cfg.decontam, cfg.progress = "words", "none", False
    cfg.max_tokens, cfg.max_prompt_tokens = 120, 400
    s = cfg.sources
    s.sharegpt.singles, s.sharegpt.followups = 1, 1
    s.sotu.update(min_words=60, max_words=120, summarize=2, rag=2, translate=1, qa=2)
    s.pydocs.update(min_words=30, max_words=80, min_docstring_words=10, summarize=1, rag=2, qa=2, code=2)
    s.maths.update(generator=0, word_problems=3, word_prompts=2)
    return OmegaConf.merge(cfg, OmegaConf.create(overrides))


def run_build(tmp_path, cfg, checks=None):
    counter = cb.TokenCounter(WordTokenizer())
    checks = {"decontam": lambda text: "FORBIDDEN" in text} if checks is None else checks
    records, stats = cb.build(cfg, counter, checks)
    tmp_path.mkdir(parents=True, exist_ok=True)
    cb.write_jsonl(tmp_path / "corpus.jsonl", records)
    packages = {name: {"packages": [], "note": "fake"} for name in stats}
    card = write_card(tmp_path, records, stats, packages, cfg, "python -m specdec.train.corpus_build", 1.0)
    return records, stats, card


def test_parse_records_drops_the_broken_tail():
    """A JSON array cut inside its last object yields the whole objects before it and the tail's length."""
    objs, tail = sharegpt.parse_records(TRUNCATED)
    assert [o["id"] for o in objs] == [c["id"] for c in SHAREGPT]
    assert 0 < tail < 80
    assert sharegpt.parse_records(SHAREGPT_TEXT) == (SHAREGPT, 0)


def test_conversations_join_parts_and_break_on_blobs():
    """Parts join in part order; a blob turn splits the conversation; same-role neighbours merge."""
    convs = sharegpt.conversations(SHAREGPT)
    assert [t[1] for t in convs["aaa"]][:2] == ["Tell me about lakes please.", "Lakes hold fresh water in basins."]
    assert convs["eee"][1] is None  # "xxxx...": 300 characters, one word
    assert sharegpt.pair_segments(convs["eee"]) == [[("Now a word about clouds.", "Clouds are water droplets.")]]
    turns = [("user", "a"), ("user", "b"), ("assistant", "c"), ("assistant", "d"), ("user", "e")]
    assert sharegpt.pair_segments(turns) == [[("a\n\nb", "c\n\nd")]]
    assert sharegpt.latin_share(["오늘은 맑고"]) == 0.0
    assert sharegpt.unescape(r"long\_name \*args") == "long_name *args"


def test_windows_fit_the_budget():
    """Greedy windows of consecutive pairs never pass the budget; a pair too long alone is skipped."""
    assert sharegpt.windows([3, 4, 10, 2, 2, 6], 7) == [(0, 2), (3, 5), (5, 6)]
    assert sharegpt.windows([8], 7) == []


def test_chunks_stay_in_the_word_range():
    """Every chunk has min_words..max_words words, overlong paragraphs included; the same seed gives the same chunks."""
    rng = random.Random(0)
    paras = [" ".join(["word."] * rng.randint(5, 400)) for _ in range(80)]
    chunks = chunk_paragraphs(paras, 100, 250, random.Random(1))
    assert chunks and all(100 <= len(c.split()) <= 250 for c in chunks)
    assert sum(len(c.split()) for c in chunks) > 0.8 * sum(len(p.split()) for p in paras)
    assert chunk_paragraphs(paras, 100, 250, random.Random(1)) == chunks


def test_po_parser_reads_translated_entries():
    """Header, fuzzy and untranslated entries are skipped; continued strings join; plurals give the singular."""
    assert catalogues.parse_po(PO) == [
        ("Enter a valid value.", "Bitte einen gültigen Wert eingeben."),
        ("A long message on two lines.", "Eine lange Nachricht auf zwei Zeilen."),
        ("One item was deleted.", "Ein Eintrag wurde gelöscht.")]


def test_flagged_records_are_dropped_and_counted(tmp_path, fake_packages):
    """A record the decontamination check flags never reaches the corpus, and the card counts it per source."""
    records, stats, card = run_build(tmp_path, config())
    assert not any("FORBIDDEN" in m["content"] for r in records for m in r["messages"])
    assert stats["sharegpt"]["flagged_decontam"] == 1
    assert card["flagged"]["sharegpt"] == 1 and card["flagged"]["sotu"] == 0
    assert card["by_source"]["sharegpt"]["checks"]["flagged_decontam"] == 1
    assert not any(r["id"].startswith("sharegpt/fff") for r in records)  # not Latin script


def test_build_is_deterministic_and_writes_the_format(tmp_path, fake_packages):
    """Same seed, same bytes; every line has the documented fields; limits hold; a new seed changes the corpus."""
    cfg = config()
    records, stats, card = run_build(tmp_path / "a", cfg)
    run_build(tmp_path / "b", cfg)
    first = (tmp_path / "a" / "corpus.jsonl").read_bytes()
    assert first == (tmp_path / "b" / "corpus.jsonl").read_bytes()
    run_build(tmp_path / "c", config(seed=1))
    assert (tmp_path / "c" / "corpus.jsonl").read_bytes() != first
    rows = [json.loads(line) for line in first.decode().splitlines()]
    assert {r["source"] for r in rows} == {"sharegpt", "sotu", "pydocs", "humaneval", "maths", "german", "catalogues"}
    for row in rows:
        assert list(row) == ["id", "source", "category", "split", "has_answer", "messages"]
        assert row["split"] in ("train", "valid") and row["id"].startswith(row["source"] + "/")
        assert row["has_answer"] == (row["messages"][-1]["role"] == "assistant")
        assert all(m["role"] in ("system", "user", "assistant") and m["content"] for m in row["messages"])
    counter = cb.TokenCounter(WordTokenizer())
    for r in records:
        limit = cfg.max_tokens if r["has_answer"] else cfg.max_prompt_tokens
        assert counter.chat(r["messages"], not r["has_answer"])[0] == r["tokens"] <= limit
    assert {r["category"] for r in rows} >= {"summarization", "rag", "translation", "qa", "math", "code"}
    assert card["records"] == len(rows) and (tmp_path / "a" / "CARD.md").read_text().startswith("# Corpus v2")
    assert json.loads((tmp_path / "a" / "card.json").read_text())["by_category"]


def test_token_counts_follow_the_chat_template():
    """Template overhead is measured from the tokenizer: the chat count equals the template's own length."""
    tok = WordTokenizer()
    counter = cb.TokenCounter(tok)
    msgs = [{"role": "user", "content": "one two three"}, {"role": "assistant", "content": "four five"}]
    for gen in (False, True):
        assert counter.chat(msgs, gen)[0] == len(tok.apply_chat_template(msgs, add_generation_prompt=gen))
    assert counter.chat(msgs, False)[1] == 2 + 2


def test_split_keeps_groups_together():
    """Records of one group share a split; about valid_fraction of groups are held out."""
    assert len({cb.split_of(f"sotu/doc-c01/{k}", 0, 0.5) for k in ("rag", "summarize", "x")}) == 1
    valid = sum(cb.split_of(f"s/g{i}/0", 0, 0.1) == "valid" for i in range(5000))
    assert 400 < valid < 600


def test_bench_prompts_are_flagged():
    """The benchmark-overlap check flags a benchmark prompt inside a longer text, not an unrelated one."""
    prompt = "A farmer has 17 goats and buys 5 more each week for a month; how many goats are on the farm now"
    check = cb.BenchOverlap([prompt, "Why is the sky blue?"])
    assert check("Please help. " + prompt + " Thanks!")
    assert check("Quick one: why is the sky blue?")
    assert not check("A farmer has 17 goats. Why is grass green?")


def test_word_problems_are_seeded_and_worked():
    """The templated maths problems repeat for a seed and every solution ends with its answer."""
    a = [maths.word_problem(random.Random(3)) for _ in range(2)]
    assert a[0] == a[1]
    rng = random.Random(0)
    for _ in range(200):
        question, answer = maths.word_problem(rng)
        assert question.endswith((".", "?")) and ("answer" in answer.lower())
