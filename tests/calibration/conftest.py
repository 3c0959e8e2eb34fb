"""Calibration fixtures: a tiny training CSV in the word-level vocabulary of the tiny models."""

from __future__ import annotations

import pytest

MRS = ["w5 w9 w17 w3 w44", "w7 w7 w30", "w12 w50 w61 w6 w90 w33 w14", "w88", "w20 w21 w22 w23", "w31 w32",
       "w41 w42 w43 w44 w45 w46", "w51 w52 w53", "w61 w62 w63 w64", "w71"]


@pytest.fixture(scope="session")
def train_csv(tmp_path_factory):
    """An E2E-style training file (mr, ref); the first MR appears twice (prompts are distinct)."""
    path = tmp_path_factory.mktemp("data") / "train.csv"
    rows = [f'"{mr}","w8 w{10 + i}"' for i, mr in enumerate(MRS)] + [f'"{MRS[0]}","w9"']
    path.write_text("mr,ref\n" + "\n".join(rows) + "\n")
    return path
