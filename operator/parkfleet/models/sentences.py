"""Sentences for the text-embedding workload: a corpus of any size, made here, and pairs
that a sentence-embedding model should place near each other (paraphrases) or far apart.

The corpus is combinatorial (subjects, actions, places, times), so 10,000 or 2 million
sentences are distinct, varied in length, and the same on every machine for a seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PARAPHRASES", "UNRELATED", "corpus", "write_jsonl"]

# (a, b): the same meaning in other words; a model must score these above UNRELATED pairs.
PARAPHRASES = (
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The car is charging in the garage overnight.", "The vehicle charges in the garage at night."),
    ("The weather is cold and rainy today.", "Today it is chilly and wet outside."),
    ("She bought a new laptop for work.", "She purchased a new computer for her job."),
    ("The train to Berlin was delayed by an hour.", "The Berlin train arrived an hour late."),
    ("Children are playing football in the park.", "Kids play soccer in the park."),
    ("The battery is almost empty.", "The battery has very little charge left."),
    ("He is reading a book about history.", "He reads a history book."),
)
# (a, b): nothing in common.
UNRELATED = (
    ("A man is playing a guitar.", "The stock market fell sharply on Monday."),
    ("The car is charging in the garage overnight.", "Penguins live in the southern hemisphere."),
    ("The weather is cold and rainy today.", "She added two spoons of sugar to her tea."),
    ("She bought a new laptop for work.", "The volcano erupted after centuries of silence."),
    ("The train to Berlin was delayed by an hour.", "My grandmother grows tomatoes every summer."),
    ("Children are playing football in the park.", "The recipe needs three eggs and some flour."),
    ("The battery is almost empty.", "The museum exhibits paintings from Spain."),
    ("He is reading a book about history.", "A storm knocked out power across the coast."),
)

_SUBJECTS = (
    "The driver",
    "A neighbour",
    "The fleet operator",
    "My sister",
    "An engineer",
    "The old man",
    "A delivery van",
    "The electric bus",
    "Our team",
    "The mechanic",
    "A student",
    "The owner",
    "The night shift",
    "A tourist",
    "The city council",
    "The taxi",
    "A cyclist",
    "The nurse",
)
_ACTIONS = (
    "parks",
    "charges the battery",
    "waits",
    "reads the news",
    "checks the tyres",
    "plans the route",
    "drinks coffee",
    "calls a friend",
    "listens to the radio",
    "updates the software",
    "cleans the windows",
    "writes a report",
    "takes a photo",
    "unloads the groceries",
    "looks for a charger",
    "repairs the door",
)
_PLACES = (
    "in the garage",
    "near the station",
    "outside the office",
    "at the supermarket",
    "by the river",
    "on a quiet street",
    "in the city centre",
    "behind the school",
    "at the airport",
    "in a parking lot",
    "next to the hospital",
    "at home",
)
_TIMES = (
    "every evening",
    "before sunrise",
    "after work",
    "on Sundays",
    "late at night",
    "during the storm",
    "in winter",
    "at noon",
    "while it rains",
    "once a month",
    "",
)
_TAILS = (
    "",
    "",
    "",
    " because the day was long",
    " and then goes home",
    " without saying a word",
    " while the engine cools down",
    " as the battery slowly fills up",
    " although nobody asked for it",
    " and everyone seems happy about it",
)


def corpus(n: int, seed: int = 0) -> Iterator[str]:
    """``n`` sentences: first every sentence of :data:`PARAPHRASES` and :data:`UNRELATED`
    (so a small corpus holds them), then generated ones."""
    fixed = list(dict.fromkeys(s for pair in PARAPHRASES + UNRELATED for s in pair))
    yield from fixed[:n]
    rng = random.Random(seed)
    for _ in range(max(0, n - len(fixed))):
        time = rng.choice(_TIMES)
        parts = [rng.choice(_SUBJECTS), rng.choice(_ACTIONS), rng.choice(_PLACES)]
        if time:
            parts.append(time)
        yield " ".join(parts) + rng.choice(_TAILS) + "."


def write_jsonl(path: Path, n: int, seed: int = 0) -> list[str]:
    """Writes ``n`` sentences to ``path``, one ``{"id": i, "text": ...}`` per line."""
    texts = list(corpus(n, seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    return texts
