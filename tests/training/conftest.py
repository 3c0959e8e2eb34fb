"""Fixtures of the training tests (helpers in train_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from train_helpers import TRAIN_LLAMA, TRAIN_QWEN2, e2e_rows, make_trainable, write_e2e  # noqa: E402


@pytest.fixture(scope="session")
def train_llama(tmp_path_factory) -> Path:
    return make_trainable(TRAIN_LLAMA, tmp_path_factory.mktemp("train") / "llama")


@pytest.fixture(scope="session")
def train_qwen2(tmp_path_factory) -> Path:
    return make_trainable(TRAIN_QWEN2, tmp_path_factory.mktemp("train") / "qwen2")


@pytest.fixture
def e2e_file(tmp_path) -> Path:
    return write_e2e(tmp_path / "train.csv", e2e_rows())


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy shared machine two threads that
    wait on each other turn seconds into minutes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
