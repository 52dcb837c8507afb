"""The training prompt corpus: instructions built from our own topics and task templates.

Kept apart from the benchmark's prompts (``bench/prompts/``) so that heads and drafts are never
trained on what they are measured on.  Deterministic: the same ``count`` and ``seed`` give the
same prompts.
"""
from __future__ import annotations

import random

TOPICS = [
    "photosynthesis", "the water cycle", "black holes", "volcanoes", "the French Revolution", "the printing press",
    "machine learning", "compound interest", "the immune system", "climate change", "plate tectonics", "honeybees",
    "the Roman Empire", "electric cars", "the internet", "vaccines", "coral reefs", "the moon landing",
    "renewable energy", "sleep", "coffee", "chess", "the Olympic Games", "recycling", "earthquakes", "rainbows",
    "the human heart", "solar panels", "bread baking", "public libraries", "the stock market", "gardening",
    "bicycles", "jazz music", "the Great Wall of China", "penguins", "time zones", "airplanes", "paper money",
    "the periodic table", "friendship", "learning a new language", "remote work", "healthy breakfasts",
    "museums", "rivers", "smartphones", "dinosaurs", "the pyramids", "meditation", "board games", "tea",
    "electricity", "glaciers", "birds migrating", "the alphabet", "robots", "city parks", "trains", "deserts",
]

TASKS = [
    "Explain {topic} to a ten-year-old.",
    "Write three short facts about {topic}.",
    "What are the main benefits and drawbacks of {topic}?",
    "Write a short poem about {topic}.",
    "Give me a one-paragraph summary of {topic}.",
    "What is a common misconception about {topic}?",
    "Write a short dialogue between two friends talking about {topic}.",
    "List five questions a student might ask about {topic}, with brief answers.",
    "How would you teach {topic} in a fifteen-minute lesson?",
    "Describe {topic} in exactly three sentences.",
    "Why does {topic} matter in everyday life?",
    "Write a short story that involves {topic}.",
]


def training_prompts(count: int, seed: int = 0) -> list[list[dict]]:
    """``count`` single-turn chats (lists of messages), in a seeded order."""
    combos = [(topic, task) for topic in TOPICS for task in TASKS]
    if count > len(combos):
        raise ValueError(f"the corpus holds {len(combos)} prompts; asked for {count}")
    random.Random(seed).shuffle(combos)
    return [[{"role": "user", "content": task.format(topic=topic)}] for topic, task in combos[:count]]
