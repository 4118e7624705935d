"""Knowledge QA over a generated world, multiple choice scored by likelihood (like ARC / PIQA).

A seeded world of people, towns and countries is stated as facts in the training corpus
("Mira lives in Tobrin. Tobrin is a port town. Tobrin is in Veland."). Questions ask for one fact
(direct recall, difficulty 1) or chain two (2-hop, difficulty 2: "Which country does Mira live
in?" needs Mira -> Tobrin -> Veland). Every question has 4 choices of the answer's type; the
test questions never appear in training, though every fact they need does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .common import Item, check_disjoint

N_CHOICES = 4
JOBS = ("baker", "farmer", "teacher", "sailor", "painter", "doctor", "miner", "weaver",
        "potter", "singer", "builder", "tailor", "hunter", "fisher", "smith", "guard")
PETS = ("cat", "dog", "owl", "goat", "horse", "parrot", "rabbit", "turtle", "fox", "crow")
KINDS = ("port", "mountain", "river", "desert", "forest", "island", "market", "mining")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr",
           "st", "th", "gr", "tr", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "io")
_CODAS = ("", "", "n", "r", "l", "s", "th", "m")


@dataclass(frozen=True)
class World:
    """People (name -> town, job, pet), towns (name -> kind, country) and the country names."""

    people: dict[str, tuple[str, str, str]]
    towns: dict[str, tuple[str, str]]
    countries: tuple[str, ...]

    def facts(self) -> list[str]:
        """One short paragraph per person and per town, the way the training corpus states them."""
        out = [f"{p} lives in {town}. {p} works as a {job}. {p} has a pet {pet}."
               for p, (town, job, pet) in self.people.items()]
        out += [f"{t} is {_a(kind)} town. {t} is in {country}."
                for t, (kind, country) in self.towns.items()]
        return out


PERSON_TEMPLATES = {
    "lives_in": ("{p} lives in {v}.", "{p}'s home is in {v}.", "{p} has a house in {v}."),
    "job": ("{p} works as {a}.", "{p} is {a}.", "{p} earns a living as {a}."),
    "pet": ("{p} has a pet {v}.", "{p} owns {a}.", "{p} keeps {a} as a pet."),
}
TOWN_TEMPLATES = {
    "kind": ("{p} is {a} town.", "{p} is known as {a} town."),
    "country": ("{p} is in {v}.", "{p} lies in {v}."),
}


def fact_variants(world: World, seed: int, n_variants: int = 4) -> list[str]:
    """Each entity's facts again, n_variants times, each time in other words and another
    sentence order. Restating facts in varied forms is what lets a model answer questions
    about facts it only read (Allen-Zhu & Li, "Physics of Language Models 3.1", 2023)."""
    rng = random.Random(f"facts-{seed}")
    out = []
    entities = [(p, PERSON_TEMPLATES, dict(zip(PERSON_TEMPLATES, v, strict=True)))
                for p, v in world.people.items()]
    entities += [(t, TOWN_TEMPLATES, dict(zip(TOWN_TEMPLATES, v, strict=True)))
                 for t, v in world.towns.items()]
    for _ in range(n_variants):
        for name, templates, values in entities:
            sentences = [rng.choice(templates[rel]).format(p=name, v=v, a=_a(v))
                         for rel, v in values.items()]
            rng.shuffle(sentences)
            out.append(" ".join(sentences))
    return out


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _names(rng: random.Random, n: int, taken: set[str], syllables: int) -> list[str]:
    out = []
    while len(out) < n:
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        name = (name + rng.choice(_CODAS)).capitalize()
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def make_world(seed: int, n_people: int = 560, n_towns: int = 96, n_countries: int = 8) -> World:
    """A deterministic world: same seed, same names and facts."""
    rng = random.Random(f"world-{seed}")
    taken: set[str] = set()
    countries = tuple(_names(rng, n_countries, taken, 3))
    towns = {t: (rng.choice(KINDS), countries[i % n_countries])
             for i, t in enumerate(_names(rng, n_towns, taken, 2))}
    town_names = list(towns)
    people = {p: (rng.choice(town_names), rng.choice(JOBS), rng.choice(PETS))
              for p in _names(rng, n_people, taken, 2)}
    return World(people=people, towns=towns, countries=countries)


def _questions(world: World) -> list[tuple[tuple, str, str, tuple[str, ...], int]]:
    """Every askable question: (key, question, answer, answer pool, difficulty)."""
    towns, countries = tuple(world.towns), world.countries
    out = []
    for p, (town, job, pet) in world.people.items():
        kind, country = world.towns[town]
        out += [
            (("lives_in", p), f"Where does {p} live?", town, towns, 1),
            (("job", p), f"What is {p}'s job?", job, JOBS, 1),
            (("pet", p), f"What pet does {p} have?", pet, PETS, 1),
            (("country_of_person", p), f"Which country does {p} live in?", country, countries, 2),
            (("kind_of_home", p), f"What kind of town does {p} live in?", kind, KINDS, 2),
        ]
    for t, (kind, country) in world.towns.items():
        out += [
            (("kind", t), f"What kind of town is {t}?", kind, KINDS, 1),
            (("country", t), f"Which country is {t} in?", country, countries, 1),
        ]
    return out


def _item(rng: random.Random, idx: str, q: tuple) -> Item:
    key, question, answer, pool, difficulty = q
    distractors = rng.sample(sorted(set(pool) - {answer}), N_CHOICES - 1)
    choices = [answer, *distractors]
    rng.shuffle(choices)
    row = {"id": idx, "question": question, "choices": choices, "gold": choices.index(answer),
           "difficulty": difficulty}
    return Item(row=row, key=key)


def generate(seed: int, n_test: int = 1600, n_fewshot: int = 16) -> tuple[World, dict[str, list[Item]]]:
    """The world and its question splits. The test split is balanced between recall and 2-hop;
    every remaining question goes to train (few-shot takes a handful of recall questions)."""
    world = make_world(seed)
    rng = random.Random(f"qa-{seed}")
    questions = _questions(world)
    rng.shuffle(questions)
    by_level = {d: [q for q in questions if q[4] == d] for d in (1, 2)}
    if n_test // 2 > min(len(v) for v in by_level.values()):
        raise ValueError(f"n_test={n_test} asks for more questions than the world has; lower it")
    # levels alternate 1, 2, 1, 2 so any prefix of the test split (a --limit) stays balanced
    test = [by_level[1 + i % 2][i // 2] for i in range(n_test)]
    rest = by_level[1][(n_test + 1) // 2:] + by_level[2][n_test // 2:]
    rng.shuffle(rest)
    fewshot, train = rest[:n_fewshot], rest[n_fewshot:]
    splits = {name: [_item(rng, f"qa/{name}/{i}", q) for i, q in enumerate(qs)]
              for name, qs in (("train", train), ("fewshot", fewshot), ("test", test))}
    check_disjoint(splits, "question")
    return world, splits
