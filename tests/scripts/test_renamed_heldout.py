"""scripts/renamed_heldout.py: the demo's held-out dev MRs under made-up names (and swapped values),
every reference of an MR renamed alike, nothing from the training side."""

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import renamed_heldout  # noqa: E402

from skipdecode.augment import parse_mr  # noqa: E402
from skipdecode.data import format_prompt  # noqa: E402
from skipdecode.pipeline import demo_split  # noqa: E402

NAMES = ["Aromi", "Cotto", "The Eagle", "The Mill"]


def write_dev(folder: Path) -> None:
    rows = []
    for i in range(200):
        name, eat = NAMES[i % 4], ("coffee shop", "pub", "restaurant")[i % 3]
        mr = f"name[{name}], eatType[{eat}], area[zone {i}]"
        rows += [(mr, f"{name} is a {eat} in zone {i}."), (mr, f"In zone {i}, {name} is a {eat}.")]
    with (folder / "devset.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("mr", "ref"), *rows])


def test_writes_each_held_out_mr_under_new_names_per_seed(tmp_path, monkeypatch, capsys):
    write_dev(tmp_path)
    out = tmp_path / "renamed.csv"
    monkeypatch.setattr(sys, "argv", ["renamed_heldout.py", "--data", str(tmp_path), "--seeds", "2",
                                      "--swap-values", "--out", str(out)])
    renamed_heldout.main()
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert rows[0] == ["mr", "ref"]
    _, held = demo_split(tmp_path)
    held_areas = {dict(parse_mr(e.prompt))["area"] for e in held}
    assert len(rows) - 1 == 2 * len(held) and held
    by_mr: dict[str, list[str]] = {}
    for mr, ref in rows[1:]:
        by_mr.setdefault(mr, []).append(ref)
    assert len(by_mr) == 2 * len({e.prompt for e in held})  # one new name per MR and seed
    for mr, refs in by_mr.items():
        values = dict(parse_mr(format_prompt(mr)))
        assert values["name"] not in NAMES and values["area"] in held_areas  # only held-out MRs, renamed
        assert all(values["name"] in r and f"a {values['eatType']}" in r for r in refs), (mr, refs)
    assert capsys.readouterr().out == f"{out}: {len(rows) - 1} pairs, {len(by_mr)} distinct MRs\n"
