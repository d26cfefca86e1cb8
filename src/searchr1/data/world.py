"""A seeded fictional world rendered as a FlashRAG corpus plus questions answerable only from it.

Names are invented from syllables, so no pretrained model knows the answers; sentences come from a
few templates with a small vocabulary, so a tiny transformer can learn to read them.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from pathlib import Path

from searchr1.config import WorldConfig
from searchr1.io import atomic_path, write_json, write_jsonl

# Syllables chosen so words look foreign: every word ends in one of a few rare clusters.
_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "y")
_CODAS = ("sk", "th", "rn", "rk", "lm")
# Real names and words the syllables can still spell.
_BLOCKLIST = frozenset(
    "gareth lilith meredith tamarisk basilisk damask saturn remark goliath nazareth sabath "
    "hebrith kazakh tarth perth bath goth moth myth sloth".split()
)

OCCUPATIONS = {
    "painter": "painted portraits and quiet river scenes",
    "engineer": "designed bridges, pumps and mills",
    "chemist": "studied dyes, salts and metals",
    "poet": "wrote short poems about rivers and mountains",
    "architect": "designed halls, towers and libraries",
    "sculptor": "carved statues from stone and wood",
    "botanist": "collected rare plants and seeds",
    "astronomer": "observed comets and distant stars",
    "composer": "wrote songs for small orchestras",
    "physician": "treated patients and wrote about fevers",
    "cartographer": "drew maps of rivers, roads and coasts",
    "mathematician": "wrote about numbers, curves and tables",
    "clockmaker": "built clocks for towers and halls",
    "merchant": "traded cloth, salt and grain",
    "historian": "wrote about old cities and their rulers",
    "weaver": "made fine cloth and carpets",
}
INDUSTRIES = {  # industry: (word in the company name, products)
    "glass": ("Glassworks", "windows, bottles and lenses"),
    "textile": ("Textiles", "cloth, rope and sails"),
    "shipbuilding": ("Shipyards", "boats, barges and ships"),
    "printing": ("Press", "books, maps and newspapers"),
    "clock": ("Clockworks", "clocks, watches and bells"),
    "lamp": ("Lampworks", "lamps, lanterns and candles"),
    "iron": ("Ironworks", "rails, tools and nails"),
    "paper": ("Paperworks", "paper, cards and envelopes"),
    "dye": ("Dyeworks", "dyes, inks and paints"),
    "instrument": ("Instruments", "flutes, drums and violins"),
    "railway": ("Railways", "engines, wagons and tracks"),
    "optics": ("Optics", "lenses, mirrors and telescopes"),
}
ORG_SUFFIXES = ("Company", "Guild", "Society", "Cooperative")
DEVICES = {
    "loom": "It helped weavers make cloth much faster.",
    "lamp": "It gave a bright and steady light.",
    "engine": "It turned steam into steady motion.",
    "press": "It printed pages quickly and cleanly.",
    "pump": "It lifted water from deep wells.",
    "telescope": "It showed distant stars clearly.",
    "kiln": "It fired bricks and pottery evenly.",
    "compass": "It helped sailors find their way.",
    "valve": "It controlled the flow of water and steam.",
    "winch": "It lifted heavy loads in harbours.",
}
EVENTS = {
    "Festival": "Musicians and dancers came from many towns.",
    "Fair": "Traders showed new goods and tools.",
    "Exhibition": "Painters and engineers showed their newest work.",
    "Congress": "Scholars met to discuss new ideas.",
    "Games": "Young athletes competed in running and rowing.",
    "Regatta": "Boats raced along the river.",
    "Summit": "Leaders met to sign new trade agreements.",
}
_PERSON_FILLERS = (
    "{P} taught many young students.",
    "{P} travelled widely and kept careful notes.",
    "{Poss} work was praised by other {occ}s.",
    "{P} lived in a small house near the market.",
)
_PLACE_FILLERS = (
    "A river runs through the old town.",
    "Many travellers visit the city in the summer.",
    "The city has a large market and an old stone bridge.",
    "The streets of the old town are narrow and quiet.",
)
COLLECTIONS = ("countries", "places", "people", "organizations", "inventions", "events")
_REFS = frozenset({"birthplace", "country", "capital", "founder", "headquarters", "inventor", "manufacturer", "place", "organizer"})

# Question templates. single: (collection, attribute, question)
SINGLE = {
    "person_birth_year": ("people", "birth_year", "In which year was {a} born?"),
    "person_birthplace": ("people", "birthplace", "In which city was {a} born?"),
    "person_occupation": ("people", "occupation", "What was the occupation of {a}?"),
    "person_death_year": ("people", "death_year", "In which year did {a} die?"),
    "place_country": ("places", "country", "In which country is {a} located?"),
    "place_founded": ("places", "founded", "In which year was the city of {a} founded?"),
    "country_capital": ("countries", "capital", "What is the capital of {a}?"),
    "org_founded": ("organizations", "founded", "In which year was {a} founded?"),
    "org_founder": ("organizations", "founder", "Who founded {a}?"),
    "org_headquarters": ("organizations", "headquarters", "In which city is {a} headquartered?"),
    "invention_year": ("inventions", "year", "In which year was the {a} invented?"),
    "invention_inventor": ("inventions", "inventor", "Who invented the {a}?"),
    "invention_manufacturer": ("inventions", "manufacturer", "Which company manufactured the {a}?"),
    "event_year": ("events", "year", "In which year was the {a} held?"),
    "event_place": ("events", "place", "In which city was the {a} held?"),
    "event_organizer": ("events", "organizer", "Which organization organized the {a}?"),
}
# bridge: (collection, relation, word added to the first query, attribute of the related entity, question)
BRIDGE = {
    "org_founder_birth_year": ("organizations", "founder", "founder", "birth_year", "In which year was the founder of {a} born?"),
    "org_founder_birthplace": ("organizations", "founder", "founder", "birthplace", "In which city was the founder of {a} born?"),
    "org_headquarters_country": ("organizations", "headquarters", "headquarters", "country", "In which country is the headquarters of {a}?"),
    "invention_inventor_birth_year": ("inventions", "inventor", "inventor", "birth_year", "In which year was the inventor of the {a} born?"),
    "invention_inventor_birthplace": ("inventions", "inventor", "inventor", "birthplace", "In which city was the inventor of the {a} born?"),
    "invention_manufacturer_headquarters": ("inventions", "manufacturer", "manufacturer", "headquarters", "In which city is the manufacturer of the {a} headquartered?"),
    "invention_manufacturer_founder": ("inventions", "manufacturer", "manufacturer", "founder", "Who founded the manufacturer of the {a}?"),
    "event_place_country": ("events", "place", "", "country", "In which country was the {a} held?"),
    "event_organizer_founder": ("events", "organizer", "organizer", "founder", "Who founded the organizer of the {a}?"),
    "person_birthplace_country": ("people", "birthplace", "", "country", "In which country was {a} born?"),
    "place_country_capital": ("places", "country", "", "capital", "What is the capital of the country where {a} is located?"),
}
# comparison: (collection, attribute, question, answer is the entity with the smaller value)
COMPARISON = {
    "people_born_earlier": ("people", "birth_year", "Who was born earlier, {a} or {b}?", True),
    "orgs_founded_earlier": ("organizations", "founded", "Which was founded earlier, {a} or {b}?", True),
    "inventions_invented_earlier": ("inventions", "year", "Which was invented earlier, the {a} or the {b}?", True),
    "events_held_earlier": ("events", "year", "Which was held earlier, the {a} or the {b}?", True),
    "places_larger_population": ("places", "population", "Which city has a larger population, {a} or {b}?", False),
}
QUESTION_MIX = {"single": 0.50, "bridge": 0.35, "comparison": 0.15}


class _Namer:
    """Invents unique words; `used` only answers membership, so output never depends on set order."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def _free(self, word: str) -> bool:
        return word not in self.used and word not in _BLOCKLIST and 4 <= len(word) <= 11

    def word(self) -> str:
        while True:
            n = self.rng.choice((2, 2, 3))
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n))
            w += self.rng.choice(_CODAS)
            if self._free(w):
                self.used.add(w)
                return w.capitalize()

    def variant(self, word: str) -> str | None:
        """The same word with one vowel changed (a near-identical name), or None."""
        w = word.lower()
        spots = [i for i, c in enumerate(w) if c in "aeiouy" and i > 0]
        for _ in range(20):
            i = self.rng.choice(spots)
            v = w[:i] + self.rng.choice([c for c in "aeiou" if c != w[i]]) + w[i + 1 :]
            if self._free(v):
                self.used.add(v)
                return v.capitalize()
        return None


def _count(rng: random.Random, rate: float) -> int:
    return int(rate) + (rng.random() < rate - int(rate))


def _nudge(rng: random.Random, year: int, lo: int, hi: int) -> int:
    return year + rng.choice((-1, 1)) * rng.randint(lo, hi)


def _build_world(cfg: WorldConfig) -> tuple[dict, _Namer]:
    """The structured facts of version 1 (entities by collection, plus distractor mentions) and the namer
    that later versions keep using, so their new names stay unused."""
    rng = random.Random(f"searchr1-world-{cfg.seed}")
    namer = _Namer(rng)
    world: dict = {c: [] for c in COLLECTIONS}
    world["mentions"] = []
    pending: list[str] = []  # entities that get a mention passage (filled in at the end)

    def distractors(e: dict) -> int:
        """Decide e's distractors: returns how many namesakes to create; queues mentions."""
        namesakes = 0
        for _ in range(_count(rng, cfg.distractors_per_entity)):
            if rng.random() < 0.5:
                namesakes += 1
            else:
                pending.append(e["id"])
        return namesakes

    def add(coll: str, prefix: str, e: dict, namesake_of: str | None = None) -> dict:
        e = {"id": f"{prefix}-{len(world[coll])}", **e, "namesake_of": namesake_of}
        world[coll].append(e)
        return e

    countries = world["countries"]
    for _ in range(max(3, cfg.num_places // 20)):
        add("countries", "country", {"name": namer.word(), "capital": None})

    def new_place(name: str, country: str, founded: int, namesake_of: str | None = None) -> dict:
        return add("places", "place", {
            "name": name, "country": country, "founded": founded,
            "population": rng.randrange(2_000, 900_000, 10), "industry": rng.choice(list(INDUSTRIES)),
        }, namesake_of)

    for i in range(cfg.num_places):
        p = new_place(namer.word(), countries[i % len(countries)]["id"], rng.randint(800, 1700))
        if i < len(countries):
            countries[i]["capital"] = p["id"]
        for _ in range(distractors(p)):
            if (name := namer.variant(p["name"])) is not None:
                new_place(name, p["country"], _nudge(rng, p["founded"], 5, 60), p["id"])

    places = [p["id"] for p in world["places"]]
    firsts = [namer.word() for _ in range(max(20, cfg.num_people // 5))]
    full_names: set[str] = set()

    def new_person(first: str, last: str, birth: int, birthplace: str, occ: str, namesake_of: str | None = None) -> dict | None:
        if f"{first} {last}" in full_names:
            return None
        full_names.add(f"{first} {last}")
        return add("people", "person", {
            "name": f"{first} {last}", "first": first, "last": last, "gender": rng.choice(("male", "female")),
            "birth_year": birth, "death_year": birth + rng.randint(55, 92), "birthplace": birthplace, "occupation": occ,
        }, namesake_of)

    for _ in range(cfg.num_people):
        p = None
        while p is None:
            birth, occ = rng.randint(1700, 1930), rng.choice(list(OCCUPATIONS))
            p = new_person(rng.choice(firsts), namer.word(), birth, rng.choice(places), occ)
        for _ in range(distractors(p)):
            birth = _nudge(rng, p["birth_year"], 1, 9)
            if rng.random() < 0.5:  # a sibling: same surname and birthplace
                new_person(rng.choice(firsts), p["last"], birth, p["birthplace"], rng.choice(list(OCCUPATIONS)), p["id"])
            elif (last := namer.variant(p["last"])) is not None:  # same first name, surname one letter off
                new_person(p["first"], last, birth, rng.choice(places), p["occupation"], p["id"])

    people = world["people"]

    def new_org(word: str, industry: str, hq: str, namesake_of: str | None = None) -> dict:
        founder = rng.choice(people)
        short = f"{word} {INDUSTRIES[industry][0]}"
        return add("organizations", "org", {
            "name": f"{short} {rng.choice(ORG_SUFFIXES)}", "short": short, "industry": industry,
            "founded": founder["birth_year"] + rng.randint(22, 50), "founder": founder["id"], "headquarters": hq,
            "moved_from": None, "moved_in": None,
        }, namesake_of)

    for _ in range(cfg.num_organizations):
        word = namer.word()
        o = new_org(word, rng.choice(list(INDUSTRIES)), rng.choice(places))
        others = [i for i in INDUSTRIES if i != o["industry"]]
        for ind in rng.sample(others, min(len(others), distractors(o))):  # same word, another trade
            new_org(word, ind, o["headquarters"] if rng.random() < 0.5 else rng.choice(places), o["id"])

    by_founding = sorted(world["organizations"], key=lambda o: (o["founded"], int(o["id"].split("-")[1])))

    def new_invention(word: str, device: str, inventor: dict, namesake_of: str | None = None) -> dict:
        year = inventor["birth_year"] + rng.randint(20, 50)
        makers = [o["id"] for o in by_founding if o["founded"] <= year]
        return add("inventions", "invention", {
            "name": f"{word} {device}", "device": device, "year": year, "inventor": inventor["id"],
            "manufacturer": rng.choice(makers) if makers else None,
        }, namesake_of)

    for _ in range(cfg.num_inventions):
        word = namer.word()
        inv = new_invention(word, rng.choice(list(DEVICES)), rng.choice(people))
        others = [d for d in DEVICES if d != inv["device"]]
        for dev in rng.sample(others, min(len(others), distractors(inv))):
            new_invention(word, dev, rng.choice(people), inv["id"])

    def new_event(word: str, kind: str, place: str, namesake_of: str | None = None) -> dict:
        org = rng.choice(world["organizations"])
        return add("events", "event", {
            "name": f"{word} {kind}", "kind": kind, "year": min(2020, org["founded"] + rng.randint(1, 60)),
            "place": place, "organizer": org["id"],
        }, namesake_of)

    for _ in range(cfg.num_events):
        word = namer.word()
        ev = new_event(word, rng.choice(list(EVENTS)), rng.choice(places))
        others = [k for k in EVENTS if k != ev["kind"]]
        for kind in rng.sample(others, min(len(others), distractors(ev))):
            new_event(word, kind, ev["place"] if rng.random() < 0.5 else rng.choice(places), ev["id"])

    index = _index(world)
    for n, eid in enumerate(pending):
        e = index[eid]
        related = {e.get(k) for k in ("birthplace", "headquarters", "place")} | {eid}
        forbidden = {e.get(k) for k in ("birth_year", "death_year", "founded", "year")}
        city = rng.choice(places)
        while city in related:
            city = rng.choice(places)
        year = rng.randint(1750, 2010)
        while year in forbidden:
            year = rng.randint(1750, 2010)
        world["mentions"].append({"id": f"{eid}-m{n}", "entity": eid, "city": city, "year": year})
    return world, namer


def _index(world: dict) -> dict[str, dict]:
    return {e["id"]: e for c in COLLECTIONS for e in world[c]}


def _evolve(world: dict, namer: _Namer, version: int, seed: int) -> list[dict]:
    """Turn the world into `version` (from version-1): orgs move, populations change, newcomers, deletions.

    Returns the changed facts as ``{"entity", "attribute", "old", "new"}`` rows.
    """
    rng = random.Random(f"searchr1-world-{seed}-v{version}")
    namer.rng = rng
    index = _index(world)
    places = [p["id"] for p in world["places"]]
    changes = []
    orgs = world["organizations"]
    for o in rng.sample(orgs, max(1, round(0.05 * len(orgs)))):
        # Never move to the founder's birthplace: bridge questions must still need two passages.
        banned = {o["headquarters"], index[o["founder"]]["birthplace"]}
        new = rng.choice([p for p in places if p not in banned])
        changes.append({"entity": o["id"], "attribute": "headquarters", "old": o["headquarters"], "new": new})
        o["moved_from"], o["headquarters"] = o["headquarters"], new
        lo = max(o["founded"] + 5, o["moved_in"] or 0) + 1
        o["moved_in"] = rng.randint(lo, max(lo, 2024))
    for p in rng.sample(world["places"], max(1, round(0.1 * len(places)))):
        new = round(p["population"] * rng.uniform(0.5, 1.8), -1)
        if new != p["population"]:
            changes.append({"entity": p["id"], "attribute": "population", "old": p["population"], "new": new})
            p["population"] = int(new)
    for _ in range(max(1, round(0.02 * len(world["people"])))):
        first, last, birth = rng.choice(world["people"])["first"], namer.word(), rng.randint(1880, 1950)
        person = {
            "id": f"person-{len(world['people'])}", "name": f"{first} {last}", "first": first, "last": last,
            "gender": rng.choice(("male", "female")), "birth_year": birth, "death_year": birth + rng.randint(55, 70),
            "birthplace": rng.choice(places), "occupation": rng.choice(list(OCCUPATIONS)), "namesake_of": None,
        }
        world["people"].append(person)
        short = f"{namer.word()} {INDUSTRIES[ind := rng.choice(list(INDUSTRIES))][0]}"
        world["organizations"].append({
            "id": f"org-{len(world['organizations'])}", "name": f"{short} {rng.choice(ORG_SUFFIXES)}", "short": short,
            "industry": ind, "founded": person["birth_year"] + rng.randint(22, 40), "founder": person["id"],
            "headquarters": rng.choice(places), "moved_from": None, "moved_in": None, "namesake_of": None,
        })
    mentions = world["mentions"]
    gone = set(rng.sample(range(len(mentions)), round(0.05 * len(mentions))))
    world["mentions"] = [m for i, m in enumerate(mentions) if i not in gone]
    return changes


def _passage(pid: str, title: str, text: str) -> dict:
    return {"id": pid, "contents": f'"{title}"\n{text}'}


def _pick(key: str, options: tuple[str, ...], k: int) -> list[str]:
    return random.Random(key).sample(options, k)  # stable per entity, whatever else changes


def _render_passage(e: dict, index: dict[str, dict]) -> dict:
    """The encyclopedia passage of one entity: its name in the title and the first sentence."""
    name, kind = e["name"], e["id"].split("-")[0]
    if kind == "country":
        cities = [p["name"] for p in index.values() if p.get("country") == e["id"] and p["id"] != e["capital"]][:3]
        listed = f"{', '.join(cities[:-1])} and {cities[-1]}" if len(cities) > 1 else "".join(cities)
        also = f" Other cities of {name} include {listed}." if cities else ""
        text = (f"{name} is a country. The capital of {name} is {index[e['capital']]['name']}.{also} "
                f"The country has mountains in the north and farmland in the south. "
                f"Most people in {name} work in farming and trade.")
    elif kind == "place":
        country = index[e["country"]]["name"]
        capital = f" It is the capital of {country}." if index[e["country"]]["capital"] == e["id"] else ""
        text = (f"{name} is a city in {country}.{capital} {name} was founded in {e['founded']} and has a population of "
                f"{e['population']}. The city is known for its {e['industry']} trade. " + " ".join(_pick(e["id"], _PLACE_FILLERS, 2)))
    elif kind == "person":
        he, his = ("He", "His") if e["gender"] == "male" else ("She", "Her")
        filler = _pick(e["id"], _PERSON_FILLERS, 1)[0].format(P=he, Poss=his, occ=e["occupation"])
        text = (f"{name} was a {e['occupation']} born in {e['birth_year']} in {index[e['birthplace']]['name']}. "
                f"{he} spent most of {his.lower()} life working as a {e['occupation']}. {he} {OCCUPATIONS[e['occupation']]}. "
                f"{filler} {name} died in {e['death_year']}.")
    elif kind == "org":
        hq = index[e["headquarters"]]["name"]
        where = (f"In {e['moved_in']}, {e['short']} moved its headquarters from {index[e['moved_from']]['name']} to {hq}."
                 if e["moved_from"] else f"The headquarters of {e['short']} is in {hq}.")
        text = (f"{name} is a {e['industry']} company founded in {e['founded']}. "
                f"The founder of {e['short']} was {index[e['founder']]['name']}. {where} "
                f"The company makes {INDUSTRIES[e['industry']][1]}. It sells its goods in many cities.")
    elif kind == "invention":
        maker = f" Its manufacturer was {index[e['manufacturer']]['name']}." if e["manufacturer"] else ""
        text = (f"The {name} is a {e['device']} first built in {e['year']}. Its inventor was {index[e['inventor']]['name']}.{maker} "
                f"{DEVICES[e['device']]} Early models of the {name} are kept in museums.")
    else:  # event
        text = (f"The {name} was held in {index[e['place']]['name']} in {e['year']}. "
                f"The organizer of the {name} was {index[e['organizer']]['name']}. {EVENTS[e['kind']]} "
                f"Thousands of visitors attended, and newspapers wrote about it for weeks.")
    return _passage(e["id"], name, text)


def _render_mention(m: dict, index: dict[str, dict]) -> dict:
    """A distractor passage naming an entity, with a lure city and year but none of its facts."""
    e, city, year = index[m["entity"]], index[m["city"]]["name"], m["year"]
    name, kind = e["name"], e["id"].split("-")[0]
    if kind == "person":
        title = f"{name} Prize"
        text = (f"The {title} is an award given every year in {city} to a young {e['occupation']}. "
                f"It was first awarded in {year}. The winner receives a small silver medal and a book of letters.")
    elif kind == "place":
        title = f"{name} Bridge"
        text = (f"The {title} is an old stone bridge on the road from {city}. It was rebuilt in {year} after a flood. "
                f"Farmers cross the bridge on their way to the market.")
    elif kind == "org":
        title = f"{e['short']} Archive"
        text = (f"The {title} keeps old letters and records of the company. The archive is in {city} and was opened in "
                f"{year}. Visitors can read the records on weekdays.")
    elif kind == "invention":
        title = f"{name} replica"
        text = (f"A {title} is shown at the museum of {city}. The replica was built in {year} by local students. "
                f"Visitors can see how the {e['device']} works.")
    else:
        title = f"{name} poster"
        text = (f"A {title} hangs in the library of {city}. The poster was restored in {year}. "
                f"It shows a crowd of visitors and a row of flags.")
    return _passage(m["id"], title, text)


def _render_corpus(world: dict) -> list[dict]:
    index = _index(world)
    rows = [_render_passage(e, index) for c in COLLECTIONS for e in world[c]]
    return rows + [_render_mention(m, index) for m in world["mentions"]]


def _aliases(value, index: dict[str, dict], attribute: str) -> list[str]:
    """Gold answers: an entity's full name (companies also their short name), or the literal value."""
    if attribute in _REFS:
        e = index[value]
        return [e["name"], e["short"]] if "short" in e else [e["name"]]
    return [str(value)]


def _resolve(spec: dict, index: dict[str, dict]) -> dict | None:
    """Question text, answers, gold queries, supporting passages and facts of a spec, or None if it has no answer."""
    t = spec["template"]
    if t in SINGLE:
        _, attr, q = SINGLE[t]
        a = index[spec["entities"][0]]
        if a[attr] is None:
            return None
        return {"type": "single", "question": q.format(a=a["name"]), "answers": _aliases(a[attr], index, attr),
                "gold_queries": [a["name"]], "supporting_ids": [a["id"]], "facts": [(a["id"], attr)]}
    if t in BRIDGE:
        _, rel, word, attr, q = BRIDGE[t]
        a = index[spec["entities"][0]]
        if a[rel] is None or index[a[rel]][attr] is None:
            return None
        b = index[a[rel]]
        return {"type": "bridge", "question": q.format(a=a["name"]), "answers": _aliases(b[attr], index, attr),
                "gold_queries": [f"{a['name']} {word}".strip(), b["name"]], "supporting_ids": [a["id"], b["id"]],
                "facts": [(a["id"], rel), (b["id"], attr)]}
    _, attr, q, smaller = COMPARISON[t]
    a, b = (index[i] for i in spec["entities"])
    if a[attr] == b[attr]:
        return None
    win = a if (a[attr] < b[attr]) == smaller else b  # answered by name, like a reference attribute
    return {"type": "comparison", "question": q.format(a=a["name"], b=b["name"]), "answers": _aliases(win["id"], index, "founder"),
            "gold_queries": [a["name"], b["name"]], "supporting_ids": [a["id"], b["id"]], "facts": [(a["id"], attr), (b["id"], attr)]}


def _pool(world: dict, rng: random.Random, kind: str, n_comparison: int) -> list[dict]:
    """All candidate specs of one question type, interleaved across templates (round robin)."""
    groups = []
    if kind == "comparison":
        for t, (coll, *_rest) in COMPARISON.items():
            ids = [e["id"] for e in world[coll]]
            groups.append([{"template": t, "entities": rng.sample(ids, 2)} for _ in range(3 * n_comparison // len(COMPARISON) + 20)])
    else:
        for t, (coll, *_rest) in (SINGLE if kind == "single" else BRIDGE).items():
            group = [{"template": t, "entities": [e["id"]]} for e in world[coll]]
            rng.shuffle(group)
            groups.append(group)
    return [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]


def _select_questions(world: dict, cfg: WorldConfig) -> tuple[list[dict], list[dict]]:
    """Pick (train, test) specs: test first, then train from questions sharing no fact with any test question."""
    rng = random.Random(f"searchr1-questions-{cfg.seed}")
    index = _index(world)
    texts = {p["id"]: p["contents"].lower() for p in _render_corpus(world)}
    quota = {}
    for split, n in (("test", cfg.num_test_questions), ("train", cfg.num_train_questions)):
        quota[split] = {"single": round(n * QUESTION_MIX["single"]), "bridge": round(n * QUESTION_MIX["bridge"])}
        quota[split]["comparison"] = n - sum(quota[split].values())
    n_comp = quota["test"]["comparison"] + quota["train"]["comparison"]
    seen_questions: set[str] = set()
    test_facts: set[tuple[str, str]] = set()
    out: dict[str, list[dict]] = {"test": [], "train": []}
    for kind in ("single", "bridge", "comparison"):
        pool = iter(_pool(world, rng, kind, n_comp))
        for split in ("test", "train"):
            need = quota[split][kind]
            picked = []
            for spec in pool:
                if len(picked) == need:
                    break
                r = _resolve(spec, index)
                if r is None or r["question"] in seen_questions:
                    continue
                if kind == "bridge" and any(a.lower() in texts[r["supporting_ids"][0]] for a in r["answers"]):
                    continue  # the first passage must not already give the answer
                if split == "train" and test_facts.intersection(r["facts"]):
                    continue
                seen_questions.add(r["question"])
                if split == "test":
                    test_facts.update(r["facts"])
                picked.append(spec)
            if len(picked) < need:
                raise ValueError(f"world too small for {need} {kind} {split} questions (got {len(picked)}); "
                                 f"raise world.num_* or lower world.num_{split}_questions")
            out[split].extend(picked)
    return out["train"], out["test"]


def _qa_row(qid: str, spec: dict, index: dict[str, dict]) -> dict:
    r = _resolve(spec, index)
    return {"id": qid, "question": r["question"], "golden_answers": r["answers"],
            "metadata": {"type": r["type"], "template": spec["template"], "gold_queries": r["gold_queries"],
                         "supporting_ids": r["supporting_ids"]}}


def _change_questions(changes: list[dict], new_orgs: list[dict], before: dict, after: dict) -> list[dict]:
    """QA rows about what changed: moved headquarters (and their countries) and new companies' founders."""
    specs = [{"template": "org_headquarters", "entities": [c["entity"]]} for c in changes if c["attribute"] == "headquarters"]
    specs += [{"template": "org_headquarters_country", "entities": [s["entities"][0]]} for s in list(specs)]
    specs += [{"template": "org_founder", "entities": [o["id"]]} for o in new_orgs]
    rows = []
    for spec in specs:
        row = _qa_row(f"change-{len(rows):05d}", spec, after)
        old = _resolve(spec, before) if spec["entities"][0] in before else None
        if old is not None and old["answers"] == row["golden_answers"]:
            continue  # moved within the same country: nothing to relearn
        row["metadata"]["previous_answers"] = old["answers"] if old else []
        rows.append(row)
    return rows


def generate_world(cfg: WorldConfig, out_dir: str | Path | None = None) -> dict:
    """Write corpus.jsonl, qa_train.jsonl, qa_test.jsonl, world.json, stats.json (and changes.json when
    cfg.version > 1) into ``out_dir or cfg.out_dir``, replacing the folder atomically. Returns the stats."""
    world, namer = _build_world(cfg)
    train, test = _select_questions(world, cfg)
    changes: dict | None = None
    for version in range(2, cfg.version + 1):
        before = copy.deepcopy(world)
        n_orgs = len(world["organizations"])
        facts = _evolve(world, namer, version, cfg.seed)
        old = {p["id"]: p["contents"] for p in _render_corpus(before)}
        new = _render_corpus(world)
        new_ids = {p["id"] for p in new}
        changes = {
            "version": version, "previous_version": version - 1,
            "changed_ids": [p["id"] for p in new if p["id"] in old and old[p["id"]] != p["contents"]],
            "new_ids": [p["id"] for p in new if p["id"] not in old],
            "deleted_ids": [pid for pid in old if pid not in new_ids],
            "facts": facts,
            "qa": _change_questions(facts, world["organizations"][n_orgs:], _index(before), _index(world)),
        }
    index = _index(world)
    corpus = _render_corpus(world)
    rows = {"train": [_qa_row(f"train-{i:05d}", s, index) for i, s in enumerate(train)],
            "test": [_qa_row(f"test-{i:05d}", s, index) for i, s in enumerate(test)]}
    words = [len(p["contents"].split()) for p in corpus]
    stats = {
        "version": cfg.version,
        "num_passages": len(corpus),
        "mean_passage_words": round(sum(words) / len(words), 2),
        "passages_by_kind": dict(sorted(Counter(p["id"].split("-")[0] if "-m" not in p["id"] else "mention" for p in corpus).items())),
        "entities": {c: len(world[c]) for c in COLLECTIONS},
        "namesakes": sum(e["namesake_of"] is not None for c in COLLECTIONS for e in world[c]),
        "questions": {s: dict(sorted(Counter(r["metadata"]["type"] for r in rs).items())) for s, rs in rows.items()},
    }
    if changes:
        stats["changes"] = {k: len(changes[k]) for k in ("changed_ids", "new_ids", "deleted_ids", "facts", "qa")}
    with atomic_path(out_dir or cfg.out_dir) as tmp:
        tmp.mkdir()
        write_jsonl(tmp / "corpus.jsonl", corpus)
        write_jsonl(tmp / "qa_train.jsonl", rows["train"])
        write_jsonl(tmp / "qa_test.jsonl", rows["test"])
        write_json(tmp / "world.json", {"seed": cfg.seed, "version": cfg.version, **world})
        write_json(tmp / "stats.json", stats)
        if changes:
            write_json(tmp / "changes.json", changes)
    return stats
