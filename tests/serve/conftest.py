"""Fixtures of the serve tests: the tiny export with a chat template, and one live server."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from servers import KEY, SubprocessServer, add_chat_template  # noqa: E402


@pytest.fixture(scope="session")
def serve_export(tiny_export, tmp_path_factory):
    """A copy of the tiny llama export whose tokenizer_config.json carries a chat template."""
    folder, _, _ = tiny_export("llama-gqa")
    copy = tmp_path_factory.mktemp("serve") / "tiny-llama"
    shutil.copytree(folder, copy)
    add_chat_template(copy)
    return copy


@pytest.fixture(scope="session")
def live_server(serve_export, tmp_path_factory):
    """`skipdecode serve` on the tiny export with an API key: 16 rows, 64 waiting, 1 thread."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with SubprocessServer(serve_export, "--api-key", KEY, "--max-batch", "16", "--max-queue", "64",
                          "--threads", "1", log=log) as server:
        yield server
