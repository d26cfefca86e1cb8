"""A seeded fictional world rendered as a FlashRAG corpus plus questions answerable only from it.

Names are invented from syllables, so no pretrained model knows the answers; sentences come from a
few templates with a small vocabulary, so a tiny transformer can learn to read them. Every surface
form (syllables, name words, passage sentences, question texts) comes from a `Style`: style 1 is the
default world, style 2 a "check world" with the same structure but phrasing and names style 1 never
uses, to test the pipeline on a world it was not tuned on.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from searchr1.config import WorldConfig
from searchr1.io import atomic_path, write_json, write_jsonl


@dataclass(frozen=True)
class Style:
    """The surface forms of a world. Templates are str.format strings over the fields that `_render_passage`
    and `_render_mention` fill in."""

    onsets: tuple[str, ...]  # a word is 2-3 (onset + vowel) syllables plus a coda
    vowels: tuple[str, ...]
    codas: tuple[str, ...]
    blocklist: frozenset[str]  # real names and words the syllables can still spell
    occupations: dict[str, str]  # occupation: what such a person did
    industries: dict[str, tuple[str, str]]  # industry: (word in the company name, products)
    org_suffixes: tuple[str, ...]
    devices: dict[str, str]  # device: a sentence about it
    events: dict[str, str]  # event kind: a sentence about it
    person_fillers: tuple[str, ...]
    place_fillers: tuple[str, ...]
    passages: dict[str, str]  # entity kind (or an optional part of its passage): template
    mentions: dict[str, tuple[str, str]]  # entity kind: (title, text) of its distractor passage
    query_words: dict[str, str]  # relation: word added to a bridge question's first gold query
    questions: dict[str, str]  # question template (SINGLE, BRIDGE, COMPARISON): text


STYLE_1 = Style(
    # Syllables chosen so words look foreign: every word ends in one of a few rare clusters.
    onsets=("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z"),
    vowels=("a", "e", "i", "o", "u", "a", "e", "o", "y"),
    codas=("sk", "th", "rn", "rk", "lm"),
    blocklist=frozenset(
        "gareth lilith meredith tamarisk basilisk damask saturn remark goliath nazareth sabath "
        "hebrith kazakh tarth perth bath goth moth myth sloth".split()
    ),
    occupations={
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
    },
    industries={
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
    },
    org_suffixes=("Company", "Guild", "Society", "Cooperative"),
    devices={
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
    },
    events={
        "Festival": "Musicians and dancers came from many towns.",
        "Fair": "Traders showed new goods and tools.",
        "Exhibition": "Painters and engineers showed their newest work.",
        "Congress": "Scholars met to discuss new ideas.",
        "Games": "Young athletes competed in running and rowing.",
        "Regatta": "Boats raced along the river.",
        "Summit": "Leaders met to sign new trade agreements.",
    },
    person_fillers=(
        "{He} taught many young students.",
        "{He} travelled widely and kept careful notes.",
        "{His} work was praised by other {occ}s.",
        "{He} lived in a small house near the market.",
    ),
    place_fillers=(
        "A river runs through the old town.",
        "Many travellers visit the city in the summer.",
        "The city has a large market and an old stone bridge.",
        "The streets of the old town are narrow and quiet.",
    ),
    passages={
        "country": "{name} is a country. The capital of {name} is {capital}.{others} The country has mountains in the "
                   "north and farmland in the south. Most people in {name} work in farming and trade.",
        "country_others": " Other cities of {name} include {listed}.",
        "place": "{name} is a city in {country}.{capital_of} {name} was founded in {founded} and has a population of "
                 "{population}. The city is known for its {industry} trade. {fillers}",
        "place_capital": " It is the capital of {country}.",
        "person": "{name} was a {occ} born in {birth_year} in {birthplace}. {He} spent most of {his} life working as a "
                  "{occ}. {He} {does}. {filler} {name} died in {death_year}.",
        "org": "{name} is a {industry} company founded in {founded}. The founder of {short} was {founder}. {where} "
               "The company makes {products}. It sells its goods in many cities.",
        "org_hq": "The headquarters of {short} is in {hq}.",
        "org_moved": "In {moved_in}, {short} moved its headquarters from {moved_from} to {hq}.",
        "invention": "The {name} is a {device} first built in {year}. Its inventor was {inventor}.{made_by} {about} "
                     "Early models of the {name} are kept in museums.",
        "invention_maker": " Its manufacturer was {maker}.",
        "event": "The {name} was held in {place} in {year}. The organizer of the {name} was {organizer}. {about} "
                 "Thousands of visitors attended, and newspapers wrote about it for weeks.",
    },
    mentions={
        "person": ("{name} Prize", "The {title} is an award given every year in {city} to a young {occ}. It was first "
                   "awarded in {year}. The winner receives a small silver medal and a book of letters."),
        "place": ("{name} Bridge", "The {title} is an old stone bridge on the road from {city}. It was rebuilt in "
                  "{year} after a flood. Farmers cross the bridge on their way to the market."),
        "org": ("{short} Archive", "The {title} keeps old letters and records of the company. The archive is in {city} "
                "and was opened in {year}. Visitors can read the records on weekdays."),
        "invention": ("{name} replica", "A {title} is shown at the museum of {city}. The replica was built in {year} by "
                      "local students. Visitors can see how the {device} works."),
        "event": ("{name} poster", "A {title} hangs in the library of {city}. The poster was restored in {year}. "
                  "It shows a crowd of visitors and a row of flags."),
    },
    query_words={"founder": "founder", "headquarters": "headquarters", "inventor": "inventor",
                 "manufacturer": "manufacturer", "organizer": "organizer"},
    questions={
        "person_birth_year": "In which year was {a} born?",
        "person_birthplace": "In which city was {a} born?",
        "person_occupation": "What was the occupation of {a}?",
        "person_death_year": "In which year did {a} die?",
        "place_country": "In which country is {a} located?",
        "place_founded": "In which year was the city of {a} founded?",
        "country_capital": "What is the capital of {a}?",
        "org_founded": "In which year was {a} founded?",
        "org_founder": "Who founded {a}?",
        "org_headquarters": "In which city is {a} headquartered?",
        "invention_year": "In which year was the {a} invented?",
        "invention_inventor": "Who invented the {a}?",
        "invention_manufacturer": "Which company manufactured the {a}?",
        "event_year": "In which year was the {a} held?",
        "event_place": "In which city was the {a} held?",
        "event_organizer": "Which organization organized the {a}?",
        "org_founder_birth_year": "In which year was the founder of {a} born?",
        "org_founder_birthplace": "In which city was the founder of {a} born?",
        "org_headquarters_country": "In which country is the headquarters of {a}?",
        "invention_inventor_birth_year": "In which year was the inventor of the {a} born?",
        "invention_inventor_birthplace": "In which city was the inventor of the {a} born?",
        "invention_manufacturer_headquarters": "In which city is the manufacturer of the {a} headquartered?",
        "invention_manufacturer_founder": "Who founded the manufacturer of the {a}?",
        "event_place_country": "In which country was the {a} held?",
        "event_organizer_founder": "Who founded the organizer of the {a}?",
        "person_birthplace_country": "In which country was {a} born?",
        "place_country_capital": "What is the capital of the country where {a} is located?",
        "people_born_earlier": "Who was born earlier, {a} or {b}?",
        "orgs_founded_earlier": "Which was founded earlier, {a} or {b}?",
        "inventions_invented_earlier": "Which was invented earlier, the {a} or the {b}?",
        "events_held_earlier": "Which was held earlier, the {a} or the {b}?",
        "places_larger_population": "Which city has a larger population, {a} or {b}?",
    },
)

# The check world: the same entities, facts and question types in words style 1 never uses.
STYLE_2 = Style(
    # Other onsets and vowels; words end in -x, -quon, -ch, -vv or -ne (never a style-1 coda).
    onsets=("qu", "w", "x", "y", "j", "ch", "sh", "pl", "cl", "fl", "sn", "tw", "zh", "sp", "gl", "sl"),
    vowels=("a", "i", "u", "oo", "ai", "au", "ia", "ou"),
    codas=("x", "quon", "ch", "vv", "ne"),
    blocklist=frozenset({"shoshone", "chouchoune"}),
    occupations={
        "surveyor": "measured fields, roads and borders",
        "bookbinder": "bound books in leather and linen",
        "potter": "shaped jugs and bowls from clay",
        "navigator": "guided ships across cold seas",
        "geologist": "studied rocks, caves and volcanoes",
        "novelist": "wrote long novels about families and wars",
        "violinist": "played the violin in crowded concert halls",
        "tailor": "sewed coats and suits for wealthy families",
        "jeweller": "made rings, brooches and necklaces",
        "beekeeper": "kept bees and sold honey and wax",
        "philosopher": "wrote essays about truth and justice",
        "shipwright": "built fishing boats and small ships",
        "herbalist": "mixed medicines from herbs and roots",
        "librarian": "looked after thousands of rare books",
        "blacksmith": "forged horseshoes, gates and tools",
        "zoologist": "studied birds, insects and fish",
    },
    industries={
        "lantern": ("Lanterns", "brass lanterns, wicks and lamp oil"),
        "bronze": ("Foundry", "bells, statues and bronze fittings"),
        "flour": ("Mills", "flour, oats and bran"),
        "pottery": ("Potteries", "jugs, bowls and roof tiles"),
        "brewing": ("Breweries", "ale, cider and malt"),
        "leather": ("Tanneries", "saddles, boots and belts"),
        "fishing": ("Fisheries", "smoked fish, nets and fish oil"),
        "timber": ("Lumberyards", "planks, beams and barrels"),
        "soap": ("Soapmakers", "soap, wax and perfume"),
        "sugar": ("Refineries", "sugar, syrup and sweets"),
        "silk": ("Silks", "silk, ribbons and lace"),
        "dairy": ("Dairies", "cheese, butter and cream"),
    },
    org_suffixes=("Trust", "Union", "Holdings", "Works"),
    devices={
        "sextant": "Sailors used it to measure the height of the sun.",
        "barometer": "It warned farmers when storms were coming.",
        "microscope": "Doctors used it to look at tiny living things.",
        "crane": "It moved heavy stones around building sites.",
        "lathe": "It shaped wood and metal while they spun.",
        "furnace": "It melted ore at a very high heat.",
        "periscope": "It let sailors see above the waves from below.",
        "typewriter": "Clerks used it to write letters quickly.",
        "thermometer": "It measured how warm or cold the air was.",
        "windmill": "It used the wind to grind grain.",
    },
    events={
        "Carnival": "Jugglers and clowns filled the streets with colour.",
        "Market": "Farmers sold cheese, fruit and wool from long rows of stalls.",
        "Conference": "Doctors and lawyers gave talks about their work.",
        "Tournament": "Teams played chess and archery for a golden cup.",
        "Jubilee": "Bells rang and everyone ate together in the square.",
        "Parade": "Bands marched down the main avenue under bright banners.",
        "Marathon": "Runners raced over the hills and along the coast.",
    },
    person_fillers=(
        "{He} often walked for hours along the shore.",
        "{He} kept a diary full of sketches and recipes.",
        "Many young {occ}s copied {his} methods.",
        "{He} rarely left {his} small workshop by the canal.",
    ),
    place_fillers=(
        "Gulls circle over the harbour at dawn.",
        "Its bakeries stay open late into the night.",
        "Pilgrims climb to the chapel on the hill above the town.",
        "Children swim in the lake beside the old walls.",
    ),
    passages={
        "country": "{name} is a nation whose seat of government is {capital}.{others} Its coast is rocky, and its "
                   "valleys grow barley and apples. Folk songs from {name} are sung at every wedding.",
        "country_others": " Smaller towns of {name} are {listed}.",
        "place": "{name} lies in {country}.{capital_of} Settlers built {name} in {founded}, and today {population} "
                 "people live there. Most workers earn their bread in the {industry} business. {fillers}",
        "place_capital": " The government of {country} meets here.",
        "person": "The {occ} {name} came into the world in {birthplace} in {birth_year} and passed away in "
                  "{death_year}. {He} {does}. {filler} The letters of {name} were kept by {his} grandchildren.",
        "org": "{name} was established by {founder} in {founded}. {where} The firm works in the {industry} business "
               "and produces {products}. Its ledgers list buyers in distant ports.",
        "org_hq": "{short} is based in {hq}.",
        "org_moved": "{short} left {moved_from} in {moved_in} and is now based in {hq}.",
        "invention": "The {name} is a {device} devised by {inventor} in {year}.{made_by} {about} "
                     "Schoolchildren still draw the {name} in their notebooks.",
        "invention_maker": " It was produced by {maker}.",
        "event": "The {name} took place in {place} in {year} and was hosted by {organizer}. {about} "
                 "Tickets for the {name} sold out long before the first day.",
    },
    mentions={
        "person": ("{name} Scholarship", "The {title} pays for one young {occ} to study in {city} each autumn. It was "
                   "set up in {year} by a circle of old friends. Winners also receive a leather notebook."),
        "place": ("{name} Lighthouse", "The {title} stands on a rocky point near {city}. Its lamp was first lit in "
                  "{year}. Keepers still climb its spiral stairs every evening to light it."),
        "org": ("{short} Museum", "The {title} in {city} shows old tools, ledgers and photographs of the firm. It "
                "opened its doors in {year}. Entry is free on Sundays."),
        "invention": ("{name} model", "A small {title} sits in a school in {city}. Pupils made the model in {year} "
                      "from wood and wire. It shows how the {device} works."),
        "event": ("{name} photograph", "A faded {title} is pinned to a wall of a cafe in {city}. Someone took the "
                  "photograph in {year}. It shows dancers, musicians and a large crowd."),
    },
    query_words={"founder": "established", "headquarters": "based", "inventor": "devised",
                 "manufacturer": "produced", "organizer": "hosted"},
    questions={
        "person_birth_year": "What year saw the birth of {a}?",
        "person_birthplace": "Which town was the birthplace of {a}?",
        "person_occupation": "What did {a} do for a living?",
        "person_death_year": "What year did {a} pass away?",
        "place_country": "{a} lies in which nation?",
        "place_founded": "When did settlers build the town of {a}?",
        "country_capital": "Which town is the seat of government of {a}?",
        "org_founded": "What year was {a} established?",
        "org_founder": "Who established {a}?",
        "org_headquarters": "Where is {a} based?",
        "invention_year": "When was the {a} devised?",
        "invention_inventor": "Who devised the {a}?",
        "invention_manufacturer": "Which firm produced the {a}?",
        "event_year": "When did the {a} take place?",
        "event_place": "Where did the {a} take place?",
        "event_organizer": "Which group hosted the {a}?",
        "org_founder_birth_year": "The person who established {a} was born in what year?",
        "org_founder_birthplace": "Which town was the birthplace of the person who established {a}?",
        "org_headquarters_country": "The town where {a} is based lies in which nation?",
        "invention_inventor_birth_year": "The person who devised the {a} was born in what year?",
        "invention_inventor_birthplace": "Which town was the birthplace of the person who devised the {a}?",
        "invention_manufacturer_headquarters": "Where is the firm that produced the {a} based?",
        "invention_manufacturer_founder": "Who established the firm that produced the {a}?",
        "event_place_country": "The {a} took place in which nation?",
        "event_organizer_founder": "Who established the group that hosted the {a}?",
        "person_birthplace_country": "{a} came into the world in which nation?",
        "place_country_capital": "Which town is the seat of government of the nation where {a} lies?",
        "people_born_earlier": "Of {a} and {b}, who came into the world first?",
        "orgs_founded_earlier": "Of {a} and {b}, which was established first?",
        "inventions_invented_earlier": "Of the {a} and the {b}, which was devised first?",
        "events_held_earlier": "Of the {a} and the {b}, which took place first?",
        "places_larger_population": "Of {a} and {b}, where do more people live?",
    },
)
STYLES = {1: STYLE_1, 2: STYLE_2}

COLLECTIONS = ("countries", "places", "people", "organizations", "inventions", "events")
_REFS = frozenset({"birthplace", "country", "capital", "founder", "headquarters", "inventor", "manufacturer", "place", "organizer"})

# Question templates (their text comes from the style). single: (collection, attribute)
SINGLE = {
    "person_birth_year": ("people", "birth_year"),
    "person_birthplace": ("people", "birthplace"),
    "person_occupation": ("people", "occupation"),
    "person_death_year": ("people", "death_year"),
    "place_country": ("places", "country"),
    "place_founded": ("places", "founded"),
    "country_capital": ("countries", "capital"),
    "org_founded": ("organizations", "founded"),
    "org_founder": ("organizations", "founder"),
    "org_headquarters": ("organizations", "headquarters"),
    "invention_year": ("inventions", "year"),
    "invention_inventor": ("inventions", "inventor"),
    "invention_manufacturer": ("inventions", "manufacturer"),
    "event_year": ("events", "year"),
    "event_place": ("events", "place"),
    "event_organizer": ("events", "organizer"),
}
# bridge: (collection, relation, attribute of the related entity)
BRIDGE = {
    "org_founder_birth_year": ("organizations", "founder", "birth_year"),
    "org_founder_birthplace": ("organizations", "founder", "birthplace"),
    "org_headquarters_country": ("organizations", "headquarters", "country"),
    "invention_inventor_birth_year": ("inventions", "inventor", "birth_year"),
    "invention_inventor_birthplace": ("inventions", "inventor", "birthplace"),
    "invention_manufacturer_headquarters": ("inventions", "manufacturer", "headquarters"),
    "invention_manufacturer_founder": ("inventions", "manufacturer", "founder"),
    "event_place_country": ("events", "place", "country"),
    "event_organizer_founder": ("events", "organizer", "founder"),
    "person_birthplace_country": ("people", "birthplace", "country"),
    "place_country_capital": ("places", "country", "capital"),
}
# comparison: (collection, attribute, answer is the entity with the smaller value)
COMPARISON = {
    "people_born_earlier": ("people", "birth_year", True),
    "orgs_founded_earlier": ("organizations", "founded", True),
    "inventions_invented_earlier": ("inventions", "year", True),
    "events_held_earlier": ("events", "year", True),
    "places_larger_population": ("places", "population", False),
}
QUESTION_MIX = {"single": 0.50, "bridge": 0.35, "comparison": 0.15}


class _Namer:
    """Invents unique words; `used` only answers membership, so output never depends on set order."""

    def __init__(self, rng: random.Random, style: Style):
        self.rng = rng
        self.style = style
        self.used: set[str] = set()

    def _free(self, word: str) -> bool:
        return word not in self.used and word not in self.style.blocklist and 4 <= len(word) <= 11

    def word(self) -> str:
        while True:
            n = self.rng.choice((2, 2, 3))
            w = "".join(self.rng.choice(self.style.onsets) + self.rng.choice(self.style.vowels) for _ in range(n))
            w += self.rng.choice(self.style.codas)
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


def _build_world(cfg: WorldConfig, style: Style) -> tuple[dict, _Namer]:
    """The structured facts of version 1 (entities by collection, plus distractor mentions) and the namer
    that later versions keep using, so their new names stay unused."""
    rng = random.Random(f"searchr1-world-{cfg.seed}")
    namer = _Namer(rng, style)
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
            "population": rng.randrange(2_000, 900_000, 10), "industry": rng.choice(list(style.industries)),
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
            birth, occ = rng.randint(1700, 1930), rng.choice(list(style.occupations))
            p = new_person(rng.choice(firsts), namer.word(), birth, rng.choice(places), occ)
        for _ in range(distractors(p)):
            birth = _nudge(rng, p["birth_year"], 1, 9)
            if rng.random() < 0.5:  # a sibling: same surname and birthplace
                new_person(rng.choice(firsts), p["last"], birth, p["birthplace"], rng.choice(list(style.occupations)), p["id"])
            elif (last := namer.variant(p["last"])) is not None:  # same first name, surname one letter off
                new_person(p["first"], last, birth, rng.choice(places), p["occupation"], p["id"])

    people = world["people"]

    def new_org(word: str, industry: str, hq: str, namesake_of: str | None = None) -> dict:
        founder = rng.choice(people)
        short = f"{word} {style.industries[industry][0]}"
        return add("organizations", "org", {
            "name": f"{short} {rng.choice(style.org_suffixes)}", "short": short, "industry": industry,
            "founded": founder["birth_year"] + rng.randint(22, 50), "founder": founder["id"], "headquarters": hq,
            "moved_from": None, "moved_in": None,
        }, namesake_of)

    for _ in range(cfg.num_organizations):
        word = namer.word()
        o = new_org(word, rng.choice(list(style.industries)), rng.choice(places))
        others = [i for i in style.industries if i != o["industry"]]
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
        inv = new_invention(word, rng.choice(list(style.devices)), rng.choice(people))
        others = [d for d in style.devices if d != inv["device"]]
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
        ev = new_event(word, rng.choice(list(style.events)), rng.choice(places))
        others = [k for k in style.events if k != ev["kind"]]
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
    style = namer.style  # newcomers get names and trades of the world's own style
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
            "birthplace": rng.choice(places), "occupation": rng.choice(list(style.occupations)), "namesake_of": None,
        }
        world["people"].append(person)
        short = f"{namer.word()} {style.industries[ind := rng.choice(list(style.industries))][0]}"
        world["organizations"].append({
            "id": f"org-{len(world['organizations'])}", "name": f"{short} {rng.choice(style.org_suffixes)}", "short": short,
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


def _render_passage(e: dict, index: dict[str, dict], style: Style) -> dict:
    """The encyclopedia passage of one entity: its name in the title, the facts questions ask about early."""
    kind, t = e["id"].split("-")[0], style.passages
    f: dict = {"name": e["name"]}  # the fields the style's templates may use
    if kind == "country":
        cities = [p["name"] for p in index.values() if p.get("country") == e["id"] and p["id"] != e["capital"]][:3]
        listed = f"{', '.join(cities[:-1])} and {cities[-1]}" if len(cities) > 1 else "".join(cities)
        f.update(capital=index[e["capital"]]["name"],
                 others=t["country_others"].format(name=e["name"], listed=listed) if cities else "")
    elif kind == "place":
        f.update(country=index[e["country"]]["name"], founded=e["founded"], population=e["population"], industry=e["industry"],
                 fillers=" ".join(_pick(e["id"], style.place_fillers, 2)))
        f["capital_of"] = t["place_capital"].format(**f) if index[e["country"]]["capital"] == e["id"] else ""
    elif kind == "person":
        he, his = ("He", "His") if e["gender"] == "male" else ("She", "Her")
        f.update(occ=e["occupation"], birth_year=e["birth_year"], death_year=e["death_year"], He=he, His=his, his=his.lower(),
                 birthplace=index[e["birthplace"]]["name"], does=style.occupations[e["occupation"]])
        f["filler"] = _pick(e["id"], style.person_fillers, 1)[0].format(**f)
    elif kind == "org":
        f.update(short=e["short"], industry=e["industry"], founded=e["founded"], founder=index[e["founder"]]["name"],
                 hq=index[e["headquarters"]]["name"], products=style.industries[e["industry"]][1], moved_in=e["moved_in"],
                 moved_from=index[e["moved_from"]]["name"] if e["moved_from"] else None)
        f["where"] = t["org_moved" if e["moved_from"] else "org_hq"].format(**f)
    elif kind == "invention":
        f.update(device=e["device"], year=e["year"], inventor=index[e["inventor"]]["name"], about=style.devices[e["device"]],
                 maker=index[e["manufacturer"]]["name"] if e["manufacturer"] else None)
        f["made_by"] = t["invention_maker"].format(**f) if e["manufacturer"] else ""
    else:  # event
        f.update(place=index[e["place"]]["name"], year=e["year"], organizer=index[e["organizer"]]["name"],
                 about=style.events[e["kind"]])
    return _passage(e["id"], e["name"], t[kind].format(**f))


def _render_mention(m: dict, index: dict[str, dict], style: Style) -> dict:
    """A distractor passage naming an entity, with a lure city and year but none of its facts."""
    e = index[m["entity"]]
    title, text = style.mentions[e["id"].split("-")[0]]
    f = {"name": e["name"], "short": e.get("short"), "occ": e.get("occupation"), "device": e.get("device"),
         "city": index[m["city"]]["name"], "year": m["year"]}
    title = title.format(**f)
    return _passage(m["id"], title, text.format(title=title, **f))


def _render_corpus(world: dict, style: Style) -> list[dict]:
    index = _index(world)
    rows = [_render_passage(e, index, style) for c in COLLECTIONS for e in world[c]]
    return rows + [_render_mention(m, index, style) for m in world["mentions"]]


def _aliases(value, index: dict[str, dict], attribute: str) -> list[str]:
    """Gold answers: an entity's full name (companies also their short name), or the literal value."""
    if attribute in _REFS:
        e = index[value]
        return [e["name"], e["short"]] if "short" in e else [e["name"]]
    return [str(value)]


def _resolve(spec: dict, index: dict[str, dict], style: Style) -> dict | None:
    """Question text, answers, gold queries, supporting passages and facts of a spec, or None if it has no answer."""
    t = spec["template"]
    q = style.questions[t]
    if t in SINGLE:
        _, attr = SINGLE[t]
        a = index[spec["entities"][0]]
        if a[attr] is None:
            return None
        return {"type": "single", "question": q.format(a=a["name"]), "answers": _aliases(a[attr], index, attr),
                "gold_queries": [a["name"]], "supporting_ids": [a["id"]], "facts": [(a["id"], attr)]}
    if t in BRIDGE:
        _, rel, attr = BRIDGE[t]
        word = style.query_words.get(rel, "")
        a = index[spec["entities"][0]]
        if a[rel] is None or index[a[rel]][attr] is None:
            return None
        b = index[a[rel]]
        return {"type": "bridge", "question": q.format(a=a["name"]), "answers": _aliases(b[attr], index, attr),
                "gold_queries": [f"{a['name']} {word}".strip(), b["name"]], "supporting_ids": [a["id"], b["id"]],
                "facts": [(a["id"], rel), (b["id"], attr)]}
    _, attr, smaller = COMPARISON[t]
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


def _select_questions(world: dict, cfg: WorldConfig, style: Style) -> tuple[list[dict], list[dict]]:
    """Pick (train, test) specs: test first, then train from questions sharing no fact with any test question."""
    rng = random.Random(f"searchr1-questions-{cfg.seed}")
    index = _index(world)
    texts = {p["id"]: p["contents"].lower() for p in _render_corpus(world, style)}
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
                r = _resolve(spec, index, style)
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


def _qa_row(qid: str, spec: dict, index: dict[str, dict], style: Style) -> dict:
    r = _resolve(spec, index, style)
    return {"id": qid, "question": r["question"], "golden_answers": r["answers"],
            "metadata": {"type": r["type"], "template": spec["template"], "gold_queries": r["gold_queries"],
                         "supporting_ids": r["supporting_ids"]}}


def _change_questions(changes: list[dict], new_orgs: list[dict], before: dict, after: dict, style: Style) -> list[dict]:
    """QA rows about what changed: moved headquarters (and their countries) and new companies' founders."""
    specs = [{"template": "org_headquarters", "entities": [c["entity"]]} for c in changes if c["attribute"] == "headquarters"]
    specs += [{"template": "org_headquarters_country", "entities": [s["entities"][0]]} for s in list(specs)]
    specs += [{"template": "org_founder", "entities": [o["id"]]} for o in new_orgs]
    rows = []
    for spec in specs:
        row = _qa_row(f"change-{len(rows):05d}", spec, after, style)
        old = _resolve(spec, before, style) if spec["entities"][0] in before else None
        if old is not None and old["answers"] == row["golden_answers"]:
            continue  # moved within the same country: nothing to relearn
        row["metadata"]["previous_answers"] = old["answers"] if old else []
        rows.append(row)
    return rows


def generate_world(cfg: WorldConfig, out_dir: str | Path | None = None) -> dict:
    """Write corpus.jsonl, qa_train.jsonl, qa_test.jsonl, world.json, stats.json (and changes.json when
    cfg.version > 1) into ``out_dir or cfg.out_dir``, replacing the folder atomically. Returns the stats.

    Also writes the questions as a user's FlashRAG data would come, without metadata:
    flashrag/world/{train,test}.jsonl rows ``{"id", "question", "golden_answers"}`` (for qa.source=flashrag,
    qa.flashrag_dir=<out>/flashrag, dataset ``world``) and question_types.jsonl, ``{"id", "type"}`` of the
    test rows (for evaluation.question_types; analysis only).
    """
    style = STYLES[cfg.style]
    world, namer = _build_world(cfg, style)
    train, test = _select_questions(world, cfg, style)
    changes: dict | None = None
    for version in range(2, cfg.version + 1):
        before = copy.deepcopy(world)
        n_orgs = len(world["organizations"])
        facts = _evolve(world, namer, version, cfg.seed)
        old = {p["id"]: p["contents"] for p in _render_corpus(before, style)}
        new = _render_corpus(world, style)
        new_ids = {p["id"] for p in new}
        changes = {
            "version": version, "previous_version": version - 1,
            "changed_ids": [p["id"] for p in new if p["id"] in old and old[p["id"]] != p["contents"]],
            "new_ids": [p["id"] for p in new if p["id"] not in old],
            "deleted_ids": [pid for pid in old if pid not in new_ids],
            "facts": facts,
            "qa": _change_questions(facts, world["organizations"][n_orgs:], _index(before), _index(world), style),
        }
    index = _index(world)
    corpus = _render_corpus(world, style)
    rows = {"train": [_qa_row(f"train-{i:05d}", s, index, style) for i, s in enumerate(train)],
            "test": [_qa_row(f"test-{i:05d}", s, index, style) for i, s in enumerate(test)]}
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
    if cfg.style != 1:  # only recorded for other styles, so style-1 files stay identical to worlds made before styles
        stats["style"] = cfg.style
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
        export = tmp / "flashrag" / "world"
        export.mkdir(parents=True)
        for split, split_rows in rows.items():
            write_jsonl(export / f"{split}.jsonl", [{k: r[k] for k in ("id", "question", "golden_answers")}
                                                    for r in split_rows])
        write_jsonl(tmp / "question_types.jsonl", [{"id": r["id"], "type": r["metadata"]["type"]} for r in rows["test"]])
    return stats
