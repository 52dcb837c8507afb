"""Maths: DeepMind's ``mathematics-dataset`` generator, and word problems of our own with worked solutions.

The generator (1.0.1) predates today's sympy and numpy: ``base_solution_linear`` moved inside
``sympy.solvers.diophantine`` and ``ndarray.itemset``/``np.object`` are gone.  ``patched_generator``
fixes both at run time, for the generator's own modules only (nothing in site-packages is edited),
makes its choices independent of set order (else they change with the hash seed), and restores
Python's, numpy's and sympy's random states afterwards.  Its questions become "solve
step by step" self-distillation prompts.

The word problems come from seeded templates (names, objects, numbers, two to four steps of
arithmetic); ``word_problems`` of them carry a reference step-by-step solution, ``word_prompts`` more
are prompts only.
"""
from __future__ import annotations

import contextlib
import math
import random
import sys
import types

from . import record

PACKAGES = ["mathematics-dataset"]
NOTE = ("DeepMind mathematics_dataset 1.0.1 generator (Apache-2.0), train-split modules; word problems from our "
        "own seeded templates (train/sources/maths.py).")
ASK = ["Solve it step by step.", "Show your work.", "Explain your reasoning step by step.", "Think step by step.",
       "Please show each step.", "Walk me through the solution.", "Can you solve this and explain each step?", ""]
NAMES = [("Amara", "she"), ("Ben", "he"), ("Chloe", "she"), ("Diego", "he"), ("Elena", "she"), ("Farid", "he"),
         ("Grace", "she"), ("Hiro", "he"), ("Isla", "she"), ("Jonas", "he"), ("Keiko", "she"), ("Liam", "he"),
         ("Mei", "she"), ("Noah", "he"), ("Olivia", "she"), ("Pedro", "he"), ("Quinn", "they"), ("Rosa", "she"),
         ("Samir", "he"), ("Tara", "she"), ("Umar", "he"), ("Vera", "she"), ("Wes", "he"), ("Yara", "she"),
         ("Zane", "he"), ("Priya", "she"), ("Tomás", "he"), ("Ingrid", "she"), ("Kofi", "he"), ("Nadia", "she")]
GOODS = [("notebook", "notebooks"), ("pen", "pens"), ("mug", "mugs"), ("ticket", "tickets"), ("sandwich", "sandwiches"),
         ("plant", "plants"), ("candle", "candles"), ("T-shirt", "T-shirts"), ("puzzle", "puzzles"), ("lamp", "lamps"),
         ("scarf", "scarves"), ("book", "books"), ("ball", "balls"), ("pie", "pies"), ("poster", "posters")]
THINGS = ["stickers", "marbles", "apples", "seashells", "cookies", "stamps", "beads", "cards", "pencils", "oranges"]


def _who(rng):
    name, pron = rng.choice(NAMES)
    return name, pron, pron.capitalize(), {"she": "her", "he": "his", "they": "their"}[pron]


def _money(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def _clock(minutes: int) -> str:
    h, m = divmod(minutes % (24 * 60), 60)
    return f"{(h - 1) % 12 + 1}:{m:02d} {'a.m.' if h < 12 else 'p.m.'}"


def p_change(rng):
    name, pron, Pron, _ = _who(rng)
    (g1, g1s), (g2, g2s) = rng.sample(GOODS, 2)
    a, b, p, q = rng.randint(2, 6), rng.randint(2, 5), rng.randint(2, 9), rng.randint(3, 15)
    total = a * p + b * q
    bill = next(v for v in (20, 50, 100, 200) if v >= total)
    question = (f"{name} buys {a} {g1s} for {p} dollars each and {b} {g2s} for {q} dollars each. {Pron} pays with "
                f"a {bill}-dollar bill. How much change does {pron} get back?")
    steps = [f"The {g1s} cost {a} × {p} = {a * p} dollars.", f"The {g2s} cost {b} × {q} = {b * q} dollars.",
             f"Together they cost {a * p} + {b * q} = {total} dollars.",
             f"The change is {bill} − {total} = {bill - total} dollars."]
    return question, steps, f"{bill - total} dollars"


def p_savings(rng):
    name, pron, Pron, poss = _who(rng)
    start, weekly, weeks = rng.randint(5, 60), rng.randint(3, 25), rng.randint(3, 12)
    saved = start + weekly * weeks
    spent = rng.randint(10, saved - 1)
    thing = rng.choice(["a bike helmet", "a video game", "a pair of shoes", "a concert ticket", "a birthday gift"])
    question = (f"{name} has {start} dollars in {poss} piggy bank. {Pron} adds {weekly} dollars every week for {weeks} "
                f"weeks, and then spends {spent} dollars on {thing}. How much money is left?")
    steps = [f"In {weeks} weeks {pron} adds {weekly} × {weeks} = {weekly * weeks} dollars.",
             f"{Pron} then has {start} + {weekly * weeks} = {saved} dollars.",
             f"After buying {thing}: {saved} − {spent} = {saved - spent} dollars."]
    return question, steps, f"{saved - spent} dollars"


def p_trip(rng):
    name, pron, Pron, _ = _who(rng)
    v1, v2 = rng.choice([40, 50, 60, 70, 80, 90]), rng.choice([30, 45, 60, 75, 100])
    t1, t2 = rng.randint(1, 4), rng.randint(1, 3)
    d1, d2 = v1 * t1, v2 * t2
    vehicle = rng.choice(["drives", "rides the bus", "travels by train"])
    question = (f"{name} {vehicle} for {t1} hours at {v1} kilometers per hour, then for {t2} more "
                f"hour{'s' if t2 > 1 else ''} at {v2} kilometers per hour. How far does {pron} travel in total?")
    steps = [f"First part: {v1} × {t1} = {d1} km.", f"Second part: {v2} × {t2} = {d2} km.",
             f"Total: {d1} + {d2} = {d1 + d2} km."]
    return question, steps, f"{d1 + d2} kilometers"


def p_share(rng):
    name, pron, Pron, poss = _who(rng)
    k, each = rng.randint(3, 9), rng.randint(4, 20)
    rest = rng.randint(0, k - 1)
    n = k * each + rest
    thing = rng.choice(THINGS)
    question = (f"{name} has {n} {thing} and shares them equally among {k} friends, giving each friend as many as "
                f"possible. How many does each friend get, and how many are left over?")
    steps = [f"Divide {n} by {k}: {k} × {each} = {k * each}, which is the largest multiple of {k} not above {n}.",
             f"So each friend gets {each} {thing}.", f"Left over: {n} − {k * each} = {rest}."]
    return question, steps, f"{each} each, {rest} left over"


def p_discount(rng):
    name, pron, Pron, _ = _who(rng)
    g, gs = rng.choice(GOODS)
    pct = rng.choice([10, 20, 25, 30, 40, 50])
    price = rng.choice([20, 40, 60, 80, 120, 160, 200])
    n = rng.randint(2, 5)
    off = price * pct // 100
    question = (f"A store sells a {g} for {price} dollars. This week everything is {pct}% off. {name} buys {n} of "
                f"them. How much does {pron} pay?")
    steps = [f"The discount on one {g} is {pct}% of {price} = {price} × {pct} / 100 = {off} dollars.",
             f"One {g} now costs {price} − {off} = {price - off} dollars.",
             f"{n} of them cost {n} × {price - off} = {n * (price - off)} dollars."]
    return question, steps, f"{n * (price - off)} dollars"


def p_work(rng):
    name, pron, Pron, _ = _who(rng)
    rate, hours, days, per = rng.randint(6, 30), rng.randint(4, 8), rng.randint(3, 6), rng.choice([6, 10, 12, 24])
    boxes = rate * hours
    question = (f"{name} packs {rate} boxes per hour at a warehouse. {Pron} works {hours} hours a day for {days} days. "
                f"Each box holds {per} items. How many items does {pron} pack in total?")
    steps = [f"Boxes per day: {rate} × {hours} = {boxes}.",
             f"Boxes in {days} days: {boxes} × {days} = {boxes * days}.",
             f"Items: {boxes * days} × {per} = {boxes * days * per}."]
    return question, steps, f"{boxes * days * per} items"


def p_ages(rng):
    (a, _, _, _), (b, _, _, _) = _who(rng), _who(rng)
    if a == b:
        b = "Sam" if a != "Sam" else "Alex"
    diff, young, later = rng.randint(2, 30), rng.randint(4, 40), rng.randint(2, 15)
    question = (f"{a} is {diff} years older than {b}. {b} is {young} years old now. What will the sum of their ages be "
                f"in {later} years?")
    old = young + diff
    steps = [f"{a} is {young} + {diff} = {old} years old now.", f"In {later} years, {b} will be {young + later} and "
             f"{a} will be {old + later}.", f"The sum is {young + later} + {old + later} = {young + old + 2 * later}."]
    return question, steps, f"{young + old + 2 * later} years"


def p_tiles(rng):
    length, width, cover = rng.randint(3, 12), rng.randint(2, 9), rng.choice([2, 3, 4, 5])
    price = rng.randint(12, 45)
    area = length * width
    boxes = math.ceil(area / cover)
    question = (f"A room is {length} meters long and {width} meters wide. One box of floor tiles covers {cover} square "
                f"meters and costs {price} dollars. How much will the tiles for the whole floor cost?")
    steps = [f"The floor area is {length} × {width} = {area} square meters.",
             f"{area} / {cover} = {area / cover:g}, so {boxes} boxes are needed" +
             (" (a part box must be bought whole)." if area % cover else "."),
             f"The cost is {boxes} × {price} = {boxes * price} dollars."]
    return question, steps, f"{boxes * price} dollars"


def p_fractions(rng):
    name, pron, Pron, _ = _who(rng)
    n = 20 * rng.randint(2, 12)
    red = n * 2 // 5
    blue = (n - red) // 4
    question = (f"{name} has a jar of {n} marbles. Two fifths of them are red, a quarter of the remaining marbles are "
                f"blue, and the rest are green. How many green marbles are there?")
    steps = [f"Red: 2/5 of {n} = {red}.", f"Remaining: {n} − {red} = {n - red}.",
             f"Blue: 1/4 of {n - red} = {blue}.", f"Green: {n - red} − {blue} = {n - red - blue}."]
    return question, steps, f"{n - red - blue} green marbles"


def p_clock(rng):
    start = rng.randint(7 * 60, 21 * 60) // 5 * 5
    parts = [rng.randint(2, 9) * 5 for _ in range(rng.randint(2, 3))]
    event = rng.choice(["A film starts", "A football match begins", "A cooking class starts", "A school play begins"])
    names = ["the main part", "a break", "a final part"][: len(parts)]
    question = (f"{event} at {_clock(start)} and has {len(parts)} parts: " +
                ", ".join(f"{n} of {p} minutes" for n, p in zip(names, parts)) + ". At what time does it end?")
    total = sum(parts)
    hours = f"{total // 60} hour{'s' if total >= 120 else ''}" + (f" and {total % 60} minutes" if total % 60 else "")
    steps = [f"Total time: {' + '.join(map(str, parts))} = {total} minutes" +
             (f", which is {hours}." if total >= 60 else "."),
             f"{_clock(start)} plus {total} minutes is {_clock(start + total)}"]
    return question, steps, _clock(start + total)


def p_recipe(rng):
    base = rng.choice([2, 3, 4, 6])
    per = rng.randint(2, 8) * 25
    target = base * rng.randint(2, 4)
    flour = per * base
    ingredient = rng.choice(["flour", "rice", "sugar", "oats", "pasta"])
    question = (f"A recipe for {base} servings uses {flour} grams of {ingredient}. How many grams of {ingredient} are "
                f"needed for {target} servings?")
    steps = [f"One serving uses {flour} / {base} = {per} grams.", f"{target} servings use {target} × {per} = "
             f"{target * per} grams."]
    return question, steps, f"{target * per} grams"


def p_unit_price(rng):
    g, gs = rng.choice(GOODS)
    n1, n2 = rng.choice([(3, 5), (4, 6), (2, 5), (6, 10), (4, 10)])
    c1, c2 = rng.randint(50, 300), rng.randint(50, 300)
    p1, p2 = n1 * c1 / 100, n2 * c2 / 100
    if c1 == c2:
        c2 += 10
        p2 = n2 * c2 / 100
    cheaper, diff = ("A", c2 - c1) if c1 < c2 else ("B", c1 - c2)
    question = (f"Shop A sells a pack of {n1} {gs} for {p1:.2f} dollars. Shop B sells a pack of {n2} {gs} for "
                f"{p2:.2f} dollars. Which shop is cheaper per {g}, and by how much?")
    steps = [f"Shop A: {p1:.2f} / {n1} = {c1 / 100:.2f} dollars per {g}.",
             f"Shop B: {p2:.2f} / {n2} = {c2 / 100:.2f} dollars per {g}.",
             f"Shop {cheaper} is cheaper by {diff / 100:.2f} dollars per {g}."]
    return question, steps, f"Shop {cheaper}, by {diff / 100:.2f} dollars per {g}"


def p_stock(rng):
    start, extra, per_day, days = rng.randint(100, 900), rng.randint(20, 300), rng.randint(10, 60), rng.randint(2, 6)
    place = rng.choice(["A warehouse", "A bookshop", "A garden centre", "A bakery supplier"])
    item = rng.choice(["crates", "boxes", "sacks", "cartons"])
    question = (f"{place} has {start} {item}. On Monday a delivery brings {extra} more. Then it sends out {per_day} "
                f"{item} every day for {days} days. How many {item} are left?")
    total = start + extra
    steps = [f"After the delivery: {start} + {extra} = {total} {item}.",
             f"Sent out: {per_day} × {days} = {per_day * days} {item}.",
             f"Left: {total} − {per_day * days} = {total - per_day * days} {item}."]
    return question, steps, f"{total - per_day * days} {item}"


def p_average(rng):
    name, pron, Pron, poss = _who(rng)
    n = rng.randint(3, 6)
    mean = rng.randint(60, 92)
    scores = [max(40, min(100, mean + rng.randint(-15, 15))) for _ in range(n - 1)]
    last = mean * n - sum(scores)
    if not 0 <= last <= 100:
        scores, last = [mean] * (n - 1), mean
    scores.append(last)
    question = (f"{name} scored {', '.join(map(str, scores[:-1]))} and {scores[-1]} on {poss} last {n} tests. "
                f"What is {poss} average score?")
    steps = [f"Add the scores: {' + '.join(map(str, scores))} = {sum(scores)}.",
             f"Divide by the number of tests: {sum(scores)} / {n} = {mean}."]
    return question, steps, str(mean)


def p_eggs(rng):
    name, pron, Pron, _ = _who(rng)
    hens, per, weeks, price = rng.randint(4, 20), rng.randint(4, 7), rng.randint(1, 4), rng.choice([2, 3, 4, 5])
    eggs = hens * per * weeks
    cartons = eggs // 12
    question = (f"{name} keeps {hens} hens, and each hen lays {per} eggs a week. {Pron} sells the eggs in cartons of "
                f"12 for {price} dollars a carton, and only full cartons are sold. How much money does {pron} make in "
                f"{weeks} week{'s' if weeks > 1 else ''}?")
    steps = [f"Eggs per week: {hens} × {per} = {hens * per}.",
             f"In {weeks} week{'s' if weeks > 1 else ''}: {hens * per} × {weeks} = {eggs} eggs.",
             f"Full cartons: {eggs} / 12 = {cartons}" + (f" with {eggs % 12} eggs left over." if eggs % 12 else "."),
             f"Money: {cartons} × {price} = {cartons * price} dollars."]
    return question, steps, f"{cartons * price} dollars"


def p_fence_cost(rng):
    length, width, cost = rng.randint(10, 60), rng.randint(5, 40), rng.randint(3, 15)
    gate = rng.choice([0, 2, 3, 4])
    perimeter = 2 * (length + width)
    place = rng.choice(["field", "playground", "paddock", "vegetable plot"])
    question = (f"A rectangular {place} is {length} meters long and {width} meters wide. Fencing costs {cost} dollars "
                f"per meter" + (f", and a {gate}-meter gap is left for a gate" if gate else "") +
                ". How much does the fence cost?")
    steps = [f"The perimeter is 2 × ({length} + {width}) = {perimeter} meters."]
    if gate:
        steps.append(f"Without the gate: {perimeter} − {gate} = {perimeter - gate} meters.")
    steps.append(f"The cost is {perimeter - gate} × {cost} = {(perimeter - gate) * cost} dollars.")
    return question, steps, f"{(perimeter - gate) * cost} dollars"


TEMPLATES = [p_change, p_savings, p_trip, p_share, p_discount, p_work, p_ages, p_tiles, p_fractions, p_clock,
             p_recipe, p_unit_price, p_stock, p_average, p_eggs, p_fence_cost]


def solution(rng: random.Random, steps: list[str], answer: str) -> str:
    """A worked solution in one of three styles, ending with the answer."""
    style = rng.randrange(3)
    if style == 0:
        body = "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))
        return f"{body}\n\nThe answer is {_end(answer)}"
    if style == 1:
        return "Let's solve this step by step.\n\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)) + \
            f"\n\nSo the answer is {_end(answer)}"
    links = ["Then", "Next,", "After that,", "Finally,"][-(len(steps) - 1):] if len(steps) > 1 else []
    joined = " ".join([steps[0]] + [f"{w} {_lower(s)}" for w, s in zip(links, steps[1:])])
    return f"{joined}\n\nAnswer: {_end(answer)}"


def _end(text: str) -> str:
    return text if text.endswith(".") else text + "."


def _lower(step: str) -> str:
    """The step with its first word lower-cased, unless that word is a name."""
    first = step.split()[0].rstrip(":,.")
    return step[0].lower() + step[1:] if first in _COMMON else step


_COMMON = {"The", "In", "One", "Total", "Together", "Boxes", "Items", "Eggs", "Money", "Sent", "Left", "After", "Red",
           "Remaining", "Blue", "Green", "Divide", "Add", "So", "Without", "First", "Second", "Full", "She", "He",
           "They"}


def word_problem(rng: random.Random) -> tuple[str, str]:
    """A templated word problem with its "step by step" request, and its worked solution."""
    question, steps, answer = rng.choice(TEMPLATES)(rng)
    ask = rng.choice(ASK)
    return (f"{question} {ask}".strip(), solution(rng, steps, answer))


@contextlib.contextmanager
def patched_generator(seed: int):
    """Import ``mathematics_dataset`` under today's sympy/numpy, seeded; global random states restored after."""
    import numpy as np
    import sympy.solvers.diophantine  # noqa: F401  (the attribute of that name is a function; get the module)

    dioph = sys.modules["sympy.solvers.diophantine"]
    if not hasattr(dioph, "base_solution_linear"):
        dioph.base_solution_linear = sys.modules["sympy.solvers.diophantine.diophantine"].base_solution_linear

    class Array(np.ndarray):
        def itemset(self, index, value):
            self[index] = value

    class NumpyShim(types.ModuleType):
        """numpy for mathematics_dataset.sample.polynomials: arrays with ``itemset``, and ``np.object``."""
        object = object

        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def zeros(*args, **kwargs):
            return np.zeros(*args, **kwargs).view(Array)

        @staticmethod
        def empty(*args, **kwargs):
            return np.empty(*args, **kwargs).view(Array)

    from mathematics_dataset.sample import polynomials
    from mathematics_dataset.util import composition

    class RandomShim(types.ModuleType):
        """random for mathematics_dataset.util.composition, blind to set order (hash seeds, memory addresses)."""

        def __getattr__(self, name):
            return getattr(random, name)

        @staticmethod
        def choice(seq):  # variable names come from a set of strings
            return random.choice(sorted(seq) if all(isinstance(x, str) for x in seq) else seq)

        @staticmethod
        def shuffle(x):  # entities come from a set of objects hashed by address
            if x and all(isinstance(e, composition.Entity) for e in x):
                x.sort(key=lambda e: (str(e._description), str(e._child_description)))
            random.shuffle(x)

    polynomials.np = NumpyShim("numpy")
    composition.random = RandomShim("random")
    from mathematics_dataset.modules import modules

    import sympy.core.random as sympy_random

    states = random.getstate(), np.random.get_state(), sympy_random.rng.getstate()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    sympy_random.seed(seed)  # randprime and friends draw from sympy's own generator
    try:
        yield modules
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        sympy_random.rng.setstate(states[2])


def generated(count: int, seed: int, max_question_chars: int = 200) -> list[tuple[str, str, str]]:
    """``(module name, question, answer)`` from the generator's train modules, round robin over the modules."""
    if count <= 0:
        return []
    with patched_generator(seed) as modules:
        flat = []

        def walk(tree, prefix=""):
            for key in sorted(tree):
                value = tree[key]
                walk(value, f"{prefix}{key}__") if isinstance(value, dict) else flat.append((prefix + key, value))

        walk(modules.train(lambda r: r))
        out, i, tries = [], 0, 0
        while len(out) < count and tries < 20 * count:
            name, module = flat[i % len(flat)]
            i, tries = i + 1, tries + 1
            problem = module()
            if len(str(problem.question)) <= max_question_chars:
                out.append((name, str(problem.question), str(problem.answer)))
        return out


def records(cfg, rng: random.Random, count=None) -> list[dict]:
    out = []
    for k, (name, question, _) in enumerate(generated(int(cfg.generator), rng.randrange(2**31))):
        ask = rng.choice(ASK[:-1])
        out.append(record("maths", f"gen-{k:05d}/0", "math", [("user", f"{question} {ask}")]))
    for k in range(int(cfg.word_problems) + int(cfg.word_prompts)):
        question, answer = word_problem(rng)
        msgs = [("user", question)] + ([("assistant", answer)] if k < int(cfg.word_problems) else [])
        out.append(record("maths", f"word-{k:05d}/0", "math", msgs))
    return out
