"""Name augmentation (skipdecode/augment.py): made-up venue names in MR and reference alike,
deterministic per pair, never touching what it cannot rename consistently. No torch."""

import random

import pytest

from skipdecode.augment import (attribute_values, augment, made_up_name, parse_mr, rename, rename_groups,
                                swap_values)
from skipdecode.data import Example, format_prompt, group_examples
from skipdecode.errors import SkipDecodeError

MR = "name[The Eagle], eatType[pub], area[riverside], near[Burger King]"


def pair(mr=MR, target="The Eagle is a pub by the riverside near Burger King. The Eagle is cheap.", group=None):
    return Example(format_prompt(mr), target, group or mr, "d.csv:2")


def test_rename_swaps_every_occurrence_in_mr_and_reference():
    e = pair()
    r = rename(e, random.Random(0))
    new = dict(parse_mr(r.prompt))
    old = dict(parse_mr(e.prompt))
    assert new.keys() == old.keys() and new["eatType"] == "pub" and new["area"] == "riverside"
    assert new["name"] != "The Eagle" and new["near"] != "Burger King" and new["name"] != new["near"]
    assert "Eagle" not in r.target and "Burger King" not in r.target
    assert r.target == (f"{new['name']} is a pub by the riverside near {new['near']}. {new['name']} is cheap.")
    assert r.group == e.group and r.prompt.endswith("\n") and "renamed" in r.source


def test_a_value_missing_from_the_reference_is_kept():
    """Renaming a name the reference leaves out would teach the model to leave names out."""
    e = pair(target="The Eagle is a pub by the riverside.")
    r = rename(e, random.Random(0))
    new = dict(parse_mr(r.prompt))
    assert new["near"] == "Burger King" and new["name"] != "The Eagle" and new["name"] in r.target
    untouched = pair(target="A pub by the riverside.")
    assert rename(untouched, random.Random(0)) is untouched


def test_a_prompt_that_is_no_e2e_mr_is_left_alone():
    e = Example("Q: what is name[x] here?", "x", "q", "d.jsonl")
    assert rename(e, random.Random(0)) is e


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_share_of_pairs_is_renamed_deterministically_in_any_order(share):
    pairs = [pair(MR.replace("riverside", f"area {i}"), f"The Eagle {i} near Burger King.") for i in range(400)]
    out = augment(pairs, names=share, seed=1)
    renamed = sum(a is not b for a, b in zip(pairs, out))
    assert renamed == pytest.approx(share * len(pairs), abs=40)
    assert augment(pairs, names=share, seed=1) == out
    shuffled = list(range(len(pairs)))
    random.Random(0).shuffle(shuffled)
    assert augment([pairs[i] for i in shuffled], names=share, seed=1) == [out[i] for i in shuffled]
    if 0 < share < 1:
        assert augment(pairs, names=share, seed=2) != out


def test_made_up_names_vary_and_look_like_names():
    rng = random.Random(0)
    names = [made_up_name(rng) for _ in range(200)]
    assert len(set(names)) > 190
    assert all(w[0].isupper() and w.isalpha() for n in names for w in n.split())


def test_rename_groups_gives_each_mr_one_new_name_across_its_references():
    refs = ["The Eagle is a pub near Burger King.", "Near Burger King: The Eagle, a pub.", "A riverside pub."]
    held = [pair(target=t) for t in refs]
    grouped = group_examples(rename_groups(held, seed=0))
    assert len(grouped) == 1 and len(grouped[0].references) == 3
    name = dict(parse_mr(grouped[0].prompt))["name"]
    assert name != "The Eagle" and all(name in r for r in grouped[0].references[:2])
    assert group_examples(rename_groups(held, seed=1))[0].prompt != grouped[0].prompt
    values = {"eatType": ("coffee shop", "pub", "restaurant")}
    both = group_examples(rename_groups(held[:2], seed=0, values=values))
    assert len(both) == 1 and dict(parse_mr(both[0].prompt))["eatType"] != "pub"  # both references say "a pub"
    inn = held[:2] + [pair(target="A riverside inn.")]
    kept = group_examples(rename_groups(inn, seed=0, values=values))  # the third reference does not say it
    assert dict(parse_mr(kept[0].prompt))["eatType"] == "pub"


def test_swap_values_draws_other_values_of_the_files_and_fixes_articles():
    pairs = [pair("name[A], eatType[coffee shop], food[Italian]", "An Italian coffee shop, A. Italian food."),
             pair("name[B], eatType[pub], food[Chinese]", "B is a pub serving Chinese food."),
             pair("name[C], eatType[restaurant], food[Fast food]", "C: a Fast food restaurant.")]
    values = attribute_values(pairs)
    assert values == {"eatType": ("coffee shop", "pub", "restaurant"), "food": ("Chinese", "Fast food", "Italian")}
    for seed in range(20):
        e = swap_values(pairs[0], random.Random(seed), values)
        new = dict(parse_mr(e.prompt))
        assert new["name"] == "A" and new["eatType"] != "coffee shop" and new["food"] != "Italian"
        article = "An" if new["food"][0] in "AEIOU" else "A"
        assert e.target == f"{article} {new['food']} {new['eatType']}, A. {new['food']}" + (
            "." if new["food"] == "Fast food" else " food.")  # "Fast food", never "Fast food food"
    publican = pair("name[D], eatType[pub], food[Chinese]", "D is a public house with Chinese food.")
    e = swap_values(publican, random.Random(0), values)
    assert dict(parse_mr(e.prompt))["eatType"] == "pub" and "public house" in e.target  # only whole words


def test_values_and_names_are_drawn_independently():
    pairs = [pair(f"name[The Eagle], eatType[pub], area[a{i}]", f"The Eagle is a pub {i}.") for i in range(300)]
    pairs += [pair(f"name[The Mill], eatType[coffee shop], area[b{i}]", f"The Mill is a coffee shop {i}.")
              for i in range(300)]
    out = augment(pairs, names=0.5, values=0.5, seed=0)
    renamed = ["The Eagle" not in o.target and "The Mill" not in o.target for o in out]
    swapped = [dict(parse_mr(o.prompt))["eatType"] != dict(parse_mr(p.prompt))["eatType"] for p, o in zip(pairs, out)]
    assert 0.4 < sum(renamed) / 600 < 0.6 and 0.4 < sum(swapped) / 600 < 0.6
    assert 0.15 < sum(r and s for r, s in zip(renamed, swapped)) / 600 < 0.35
    names_only = augment(pairs, names=0.5, seed=0)  # adding value swaps leaves the renaming draws as they were
    assert [dict(parse_mr(o.prompt))["name"] for o in names_only] == [dict(parse_mr(o.prompt))["name"] for o in out]


@pytest.mark.parametrize("kw, flag", [({"names": -0.1}, "--augment-names"), ({"values": 1.5}, "--augment-values")])
def test_bad_share_names_the_flag(kw, flag):
    with pytest.raises(SkipDecodeError, match=rf"{flag}: .* is not a share in \[0, 1\]"):
        augment([pair()], **kw)
