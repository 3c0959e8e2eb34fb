"""Name augmentation for E2E fine-tuning: rename the venue (``name[...]``) and its landmark
(``near[...]``) in a share of the training pairs, in the MR and in the reference alike.

Why: the E2E test set names venues that the dev files never do (76 of the demo's first 128 test
MRs: Blue Spice, Giraffe, Green Man...). At full depth a fine-tuned SmolLM2 copies such a name
from the prompt; under a 3x skip schedule it mostly does not ("The Blue Spice is a coffee shop that
serves Blue."), because the dev files' twenty names can be memorised instead of copied. Pairs whose
names are made up at random leave nothing to memorise, so the schedule has to learn to copy.

The made-up names are built from syllables (``Velmor``, ``The Tasken Grill``), never from any
list of real venues, so no test-set name can leak in. A pair whose reference does not contain its
MR's value verbatim keeps that value: renaming it in the MR alone would teach leaving it out.
Each pair's draw depends only on the seed and the pair's own text, so the result is the same for
any file order and on every machine.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import replace
from typing import Iterable, Sequence

from skipdecode.data import Example, format_prompt
from skipdecode.errors import check_share

AUGMENT_FIELDS = {"augment_names": "--augment-names", "augment_values": "--augment-values"}
"""The settings (DemoConfig fields, train's args) that choose the augmentation, and their flags:
recorded in a checkpoint's skipdecode.json when set."""
RENAMED_ATTRIBUTES = ("name", "near")
"""The MR attributes whose values are proper names, and so may be swapped for made-up ones."""
SWAPPED_ATTRIBUTES = ("eatType", "food")
"""Categorical attributes whose values a reference states verbatim ("a pub", "Italian food"), and so
may be swapped for another value of the same attribute, MR and reference alike."""
_ONSETS = ("b", "br", "c", "ch", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "pr", "r", "s",
           "sh", "st", "t", "tr", "v", "w", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
_CODAS = ("", "", "", "", "n", "r", "l", "s", "m", "x", "nd")
_NOUNS = ("Grill", "Kitchen", "Tavern", "House", "Inn", "Bistro", "Cafe", "Arms", "Garden", "Table")
"""Venue words a made-up name may end with ("The Velmor Tavern"): they are what real names look like."""
_ATTRIBUTE = re.compile(r"(\w[\w ]*?)\[([^\]]*)\]")


def made_up_word(rng: random.Random) -> str:
    """One capitalised word of 1-3 random syllables (2 most often)."""
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(rng.choice((1, 2, 2, 3)))).capitalize()


def made_up_name(rng: random.Random) -> str:
    """A venue-like name: one or two made-up words, sometimes after "The", sometimes before a venue word."""
    words = [made_up_word(rng) for _ in range(rng.choice((1, 1, 2)))]
    if rng.random() < 0.3:
        words.append(rng.choice(_NOUNS))
    if rng.random() < 0.4:
        words.insert(0, "The")
    return " ".join(words)


def parse_mr(prompt: str) -> list[tuple[str, str]]:
    """An E2E prompt's (attribute, value) pairs in order: ``name[Cotto], near[The Bakers]``."""
    return [(k.strip(), v) for k, v in _ATTRIBUTE.findall(prompt)]


def _mr_prompt(attributes: Sequence[tuple[str, str]]) -> str:
    return format_prompt(", ".join(f"{k}[{v}]" for k, v in attributes))


def _e2e_attributes(example: Example) -> list[tuple[str, str]] | None:
    """The pair's MR attributes, or None when its prompt is no E2E MR (a JSONL prompt, say)."""
    attributes = parse_mr(example.prompt)
    return attributes if attributes and _mr_prompt(attributes) == example.prompt else None


def rename(example: Example, rng: random.Random, in_target_only: bool = True) -> Example:
    """The pair with each renamable value swapped for a made-up name (the same new name wherever the
    old one appears); the pair itself when nothing qualifies. ``in_target_only``: only values its
    reference contains verbatim (training); False renames every one, drawn in the MR's order, so
    that all references of an MR renamed with equal seeds keep one prompt (evaluation)."""
    attributes = _e2e_attributes(example)
    if attributes is None:
        return example
    target = example.target
    new_values = {}
    for key, value in attributes:
        if (key in RENAMED_ATTRIBUTES and value and value not in new_values
                and (value in target or not in_target_only)):
            new_values[value] = made_up_name(rng)
    if not new_values:
        return example
    pattern = re.compile("|".join(re.escape(v) for v in sorted(new_values, key=len, reverse=True)))
    target = pattern.sub(lambda m: new_values[m.group(0)], target)
    mr = _mr_prompt([(k, new_values.get(v, v) if k in RENAMED_ATTRIBUTES else v) for k, v in attributes])
    return replace(example, prompt=mr, target=target, source=f"{example.source} (renamed)")


def _word(value: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(value)}(?!\w)")


def _swap_in_text(text: str, value: str, swapped: str) -> str:
    """``value`` replaced by ``swapped`` as a word, the article before it made to fit ("an Italian"
    -> "a pub") and no word doubled ("Chinese food" -> "Fast food", not "Fast food food")."""
    tail = swapped.split()[-1]
    pattern = re.compile(rf"(?:(?<!\w)([Aa]n?) )?(?<!\w){re.escape(value)}(?!\w)(?: {re.escape(tail)}(?!\w))?")

    def sub(m: re.Match) -> str:
        article = m.group(1)
        if article:
            article = article[0] + ("n" if swapped[0].lower() in "aeiou" else "")
            return f"{article} {swapped}"
        return swapped

    return pattern.sub(sub, text)


def attribute_values(examples: Iterable[Example]) -> dict[str, tuple[str, ...]]:
    """The values each swappable attribute takes in these pairs' MRs, sorted: what a swap draws from
    (the training files' own values, so nothing comes from the test set)."""
    seen: dict[str, set[str]] = {k: set() for k in SWAPPED_ATTRIBUTES}
    for e in examples:
        for key, value in parse_mr(e.prompt):
            if key in seen:
                seen[key].add(value)
    return {k: tuple(sorted(v)) for k, v in seen.items() if len(v) > 1}


def swap_values(example: Example, rng: random.Random, values: dict[str, tuple[str, ...]],
                texts: Sequence[str] | None = None) -> Example:
    """The pair with each categorical value (``SWAPPED_ATTRIBUTES``) that every one of ``texts``
    (default: its reference) contains as a word swapped for another value of its attribute, drawn
    uniformly from ``values``, in the MR and in the reference; the pair itself when none qualifies."""
    attributes = _e2e_attributes(example)
    if attributes is None:
        return example
    texts = [example.target] if texts is None else texts
    new = {}
    for key, value in attributes:
        others = [v for v in values.get(key, ()) if v != value]
        if others and all(_word(value).search(t) for t in texts):
            new[(key, value)] = rng.choice(others)
    if not new:
        return example
    target = example.target
    for (key, value), swapped in new.items():
        target = _swap_in_text(target, value, swapped)
    mr = _mr_prompt([(k, new.get((k, v), v)) for k, v in attributes])
    return replace(example, prompt=mr, target=target, source=f"{example.source} (values swapped)")


def rename_groups(examples: Sequence[Example], seed: int = 0,
                  values: dict[str, tuple[str, ...]] | None = None) -> list[Example]:
    """Every pair renamed, with one draw per group (E2E: per MR), so that an MR's references share
    its new names: unseen-name evaluation pairs made from held-out dev MRs, without the test set.
    With ``values``, each categorical value that all of the group's references state verbatim is
    swapped as well (one draw per group)."""
    refs: dict[str, list[str]] = {}
    for e in examples:
        refs.setdefault(e.group, []).append(e.target)
    out = []
    for e in examples:
        renamed = rename(e, random.Random(hashlib.sha256(f"{seed}:{e.group}".encode()).digest()), in_target_only=False)
        if values:
            rng = random.Random(hashlib.sha256(f"{seed}:values:{e.group}".encode()).digest())
            renamed = swap_values(renamed, rng, values, texts=refs[e.group])
        out.append(renamed)
    return out


def check_shares(names: float, values: float) -> None:
    """Refuse either share outside [0, 1] with its flag's name (before anything loads)."""
    for share, flag in zip((names, values), AUGMENT_FIELDS.values()):
        check_share(share, flag)


def augment(examples: Sequence[Example], names: float = 0.0, values: float = 0.0, seed: int = 0) -> list[Example]:
    """Rename ``names`` of the E2E pairs and swap the categorical values of ``values`` of them
    (each pair drawn on its own, by a seeded hash of its text; the two draws are independent), in
    input order. Values are drawn from the ones these pairs use. A pair keeps its ``group``, so
    held-out splits made before are unaffected."""
    check_shares(names, values)
    pool = attribute_values(examples) if values else {}
    out = []
    for e in examples:
        key = f"{e.prompt}\0{e.target}"
        rng = random.Random(hashlib.sha256(f"{seed}:{key}".encode()).digest())
        a = rename(e, rng) if rng.random() < names else e
        if values:
            rng = random.Random(hashlib.sha256(f"{seed}:values:{key}".encode()).digest())
            a = swap_values(a, rng, pool) if rng.random() < values else a
        out.append(a)
    return out
