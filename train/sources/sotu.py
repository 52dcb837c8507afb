"""State of the Union addresses (``sotu``): long public-domain prose to summarise, question and translate.

Speeches (1790 to today) are cleaned of stage directions (``[Applause]``), cut into chunks of
``min_words`` to ``max_words`` words at paragraph ends, and distinct chunks become summarisation,
RAG (the chunk or a 120-300 word passage of it as context; templated questions about its own terms,
some about a term it lacks: "say you don't know") and English-to-French/Spanish/German prompts.  Short factual questions about the presidents
come from the package's metadata.  All are self-distillation prompts (no reference answers).
"""
from __future__ import annotations

import collections
import csv
import random
import re

from . import chunk_paragraphs, package_dir, paragraphs, rag_chat, record

PACKAGES = ["sotu"]
NOTE = ("U.S. Presidential Annual Messages and State of the Union Addresses 1790-present, from the UCSB American "
        "Presidency Project; the speeches are U.S. government works (public domain), the package is MIT.")

SUMMARIZE = [
    "{text}\n\nSummarize the passage above in a few sentences.",
    "Summarize the following speech excerpt:\n\n{text}",
    "Please write a short summary of this text.\n\n{text}",
    "{text}\n\nWhat are the main points of this excerpt? Answer in a short paragraph.",
    "{text}\n\nGive me a three-sentence summary of this.",
    "Here is part of a State of the Union address by {president} ({year}):\n\n{text}\n\nSummarize it briefly.",
    "{text}\n\nTL;DR in two or three sentences:",
    "Read the text below and list its key ideas as short bullet points.\n\n{text}",
    "{text}\n\nCan you condense this into one short paragraph?",
    "I don't have time to read this whole passage. What is it about?\n\n{text}",
]
TERM_QUESTIONS = [
    "What does the speaker say about {term}?",
    "According to the context, what is said about {term}?",
    "What does the President propose regarding {term}?",
    "Why is {term} mentioned in this passage?",
    "What is the speaker's position on {term}?",
    "In one sentence, what does the context say about {term}?",
]
GENERAL_QUESTIONS = [
    "What is the main subject of this passage?",
    "What does the President ask Congress to do here?",
    "Which problems or challenges does the speaker describe?",
    "What reasons does the speaker give for his proposals?",
    "Which countries or places are mentioned, and why?",
]
NUMBER_QUESTION = "What does the figure {number} refer to in the context?"
TRANSLATE = [
    "Translate this paragraph from English into {lang}:\n\n{text}",
    "Please translate the following English text into {lang}:\n\n{text}",
    "Translate into {lang}:\n\n{text}",
    "Can you translate this passage into {lang} for me?\n\n{text}",
]
LANGUAGES = ["French", "Spanish", "German"]
FACT_QUESTIONS = [
    "Who was the President of the United States in {year}?",
    "Which political party did {president} belong to?",
    "In which years was {president} President of the United States?",
    "What is {president} best remembered for?",
    "What were the main challenges the United States faced during {president}'s presidency?",
    "Who was President of the United States before {president}?",
]
_SKIP = {"The", "This", "We", "Our", "It", "In", "I", "But", "And", "For", "A", "As", "If", "That", "These",
         "There", "Mr", "Mrs", "Madam", "Speaker", "President", "Vice", "Members", "Congress", "My", "You", "They",
         "Let", "So", "Now", "Thank", "Tonight", "Today", "When", "While", "With", "What", "Yet", "To", "He", "She",
         "United", "America", "Americans", "American", "Federal", "Government", "Nation", "Union", "States", "God",
         "Senate", "House", "Executive", "Constitution", "Treasury", "State", "National", "Department"}
_NOUN = re.compile(r"[a-z]{4,}(?:tion|sion|ment|ness|ity|ance|ence|ture|ism|ship|ies|ers|ists)s?")
_STOP = {"government", "constitution", "administration", "attention", "consideration", "question", "position",
         "condition", "conditions", "measures", "others", "members", "necessity", "authority", "difference"}


def load_speeches() -> list[dict]:
    """Metadata rows (``fileid``, ``year``, ``president_full``, ``party``) with the cleaned ``text``."""
    data = package_dir("sotu") / "data"
    with open(data / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["text"] = clean((data / "speeches" / f"{row['fileid']}.txt").read_text(encoding="utf-8"))
    return rows


def clean(text: str) -> str:
    """Stage directions (``[Applause]``, ``[ As delivered in person ... ]``) removed, spaces tidied."""
    text = re.sub(r"\[\s*[A-Za-z][A-Za-z ,.;:'-]*\]", "", text)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r" +\n", "\n", text).strip()


def terms(text: str) -> list[str]:
    """Salient terms of a chunk, most frequent first: names inside sentences, long nouns said at least twice."""
    found = collections.Counter()
    for m in re.finditer(r"(?<=[a-z,;:] )([A-Z][a-z]+(?: (?:of |the |and )?[A-Z][a-z]+){0,3})", text):
        if m.group(1).split()[0] not in _SKIP:
            found[m.group(1)] += 2
    for w in re.findall(r"\b[a-z]{8,}\b", text):
        if _NOUN.fullmatch(w) and w not in _STOP:
            found[w] += 1
    return [t for t, n in found.most_common() if n >= 2]


def passage(paras: list[str], rng: random.Random, low: int = 40, high: int = 150) -> str:
    """Consecutive paragraphs (from a random one) of ``low`` to ``high`` words, the last cut at a sentence end."""
    start = rng.randrange(len(paras))
    out: list[str] = []
    for para in paras[start:] + paras[:start]:
        if sum(len(p.split()) for p in out) >= low:
            break
        out.append(para)
    text = "\n\n".join(out)
    if len(text.split()) > high:
        sentences, kept = re.split(r"(?<=[.!?])\s+", text), []
        for s in sentences:
            if kept and len(" ".join(kept + [s]).split()) > high:
                break
            kept.append(s)
        text = " ".join(kept)
    return text


def rag_question(rng: random.Random, chunk: str, other_terms: list[str], unanswerable: float) -> str:
    own = terms(chunk)
    if other_terms and rng.random() < unanswerable:
        missing = [t for t in other_terms[:5] if t.lower() not in chunk.lower()]
        if missing:
            return rng.choice(TERM_QUESTIONS[:3]).format(term=rng.choice(missing))
    numbers = re.findall(r"\b\d{1,3}(?:,\d{3})+\b|\b\d+ (?:percent|million|billion)\b", chunk)
    roll = rng.random()
    if numbers and roll < 0.15:
        return NUMBER_QUESTION.format(number=rng.choice(numbers))
    if own and roll < 0.8:
        return rng.choice(TERM_QUESTIONS).format(term=rng.choice(own[:4]))
    return rng.choice(GENERAL_QUESTIONS)


def records(cfg, rng: random.Random, count=None) -> list[dict]:
    speeches = load_speeches()
    chunks = [(row, j, chunk) for row in speeches
              for j, chunk in enumerate(chunk_paragraphs(paragraphs(row["text"]), int(cfg.min_words),
                                                         int(cfg.max_words), rng))]
    rng.shuffle(chunks)
    n_sum, n_rag, n_tr = int(cfg.summarize), int(cfg.rag), int(cfg.translate)
    out = []
    for i, (row, j, chunk) in enumerate(chunks[: n_sum + n_rag + n_tr]):
        key = f"{row['fileid']}-c{j:03d}"
        president, year = row["president_full"], row["year"]
        if i < n_sum:
            prompt = rng.choice(SUMMARIZE).format(text=chunk, president=president, year=year)
            out.append(record("sotu", f"{key}/summarize", "summarization", [("user", prompt)]))
        elif i < n_sum + n_rag:
            context = chunk if rng.random() < 0.5 else passage(paragraphs(chunk), rng, 120, 300)
            other = terms(chunks[(i + 1) % len(chunks)][2])
            question = rag_question(rng, context, other, float(cfg.unanswerable))
            title = rng.choice([f"State of the Union Address – {president}, {year} (excerpt)", ""])
            out.append(record("sotu", f"{key}/rag", "rag", rag_chat(rng, title, context, question)))
        else:
            prompt = rng.choice(TRANSLATE).format(lang=rng.choice(LANGUAGES), text=passage(paragraphs(chunk), rng))
            out.append(record("sotu", f"{key}/translate", "translation", [("user", prompt)]))
    facts = sorted({q.format(year=row["year"], president=row["president_full"])
                    for row in speeches for q in FACT_QUESTIONS})
    for k, question in enumerate(rng.sample(facts, min(int(cfg.qa), len(facts)))):
        out.append(record("sotu", f"facts-{k:04d}/0", "qa", [("user", question)]))
    return out
