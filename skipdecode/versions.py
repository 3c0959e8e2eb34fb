"""Installed versions of the packages a report or benchmark depends on (absent ones left out)."""

from __future__ import annotations

from importlib import metadata
from typing import Iterable


def package_versions(names: Iterable[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
