"""Where the E2E data comes from: a folder the user names, the shared folder beside a checkout
(CI has ``../shared/data/e2e``), or the public release, downloaded once into the cache."""

from __future__ import annotations

import io
import urllib.request
import zipfile
from pathlib import Path

from skipdecode.errors import SkipDecodeError

E2E_URL = "https://github.com/tuetschek/e2e-dataset/releases/download/v1.0.0/e2e-dataset.zip"
E2E_TRAIN = ("devset.csv", "clean-devel.csv")
"""Training files, the ones present are used (the official trainset is not in every copy)."""
E2E_TEST = "testset_w_refs.csv"


def _candidates() -> list[Path]:
    checkout = Path(__file__).resolve().parents[1]
    return [Path.cwd() / "../shared/data/e2e", checkout / "../shared/data/e2e"]


def find_e2e(data: str | Path | None, cache: Path) -> Path:
    """A folder holding devset.csv and testset_w_refs.csv (downloading the release if needed)."""
    if data is not None:
        folder = Path(data)
        if not (folder / "devset.csv").is_file() or not (folder / E2E_TEST).is_file():
            raise SkipDecodeError(f"{folder}: expected devset.csv and {E2E_TEST} (the E2E NLG release)")
        return folder
    for folder in [*_candidates(), cache]:
        if (folder / "devset.csv").is_file() and (folder / E2E_TEST).is_file():
            return folder.resolve()
    try:
        with urllib.request.urlopen(E2E_URL, timeout=30) as r:
            archive = zipfile.ZipFile(io.BytesIO(r.read()))
    except OSError as e:
        raise SkipDecodeError(f"no E2E data in ../shared/data/e2e and the download of {E2E_URL} failed ({e}); "
                              "pass --data DIR with devset.csv and testset_w_refs.csv") from None
    cache.mkdir(parents=True, exist_ok=True)
    for name in archive.namelist():
        if Path(name).name in ("devset.csv", "trainset.csv", E2E_TEST):
            (cache / Path(name).name).write_bytes(archive.read(name))
    return cache


def train_files(folder: Path) -> list[Path]:
    return [folder / n for n in E2E_TRAIN if (folder / n).is_file()]
