"""scripts/demo_names.py: the demo's outputs split by whether the training files name the venue."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import demo_names  # noqa: E402


def row(name: str, output: str, rouge_l: float) -> dict:
    return {"input": f"name[{name}], eatType[pub], near[Café Sicilia]", "output": output, "rouge_l": rouge_l}


def test_splits_by_seen_name_and_counts_names_copied():
    full = [row("Cotto", "Cotto is a pub.", 60.0), row("Blue Spice", "Blue Spice is a pub.", 50.0),
            row("The Vaults", "The Vaults is a pub near Café Sicilia.", 70.0)]
    skip = [row("Cotto", "Cotto is a pub.", 40.0), row("Blue Spice", "Blue is a pub.", 20.0),
            row("The Vaults", "The Vaults is a pub.", 30.0)]
    parts = demo_names.name_split(full, skip, seen={"Cotto", "Aromi"})
    assert parts["seen names"] == {"mrs": 1, "full": 60.0, "copied_full": 1, "skip": 40.0, "copied_skip": 1}
    unseen = parts["unseen names"]
    assert unseen["mrs"] == 2 and unseen["copied_full"] == 2 and unseen["copied_skip"] == 1
    assert unseen["full"] == pytest.approx(60.0) and unseen["skip"] == pytest.approx(25.0)


def test_leaves_out_an_empty_part():
    rows = [row("Cotto", "Cotto is a pub.", 60.0)]
    assert list(demo_names.name_split(rows, rows, seen={"Cotto"})) == ["seen names"]
