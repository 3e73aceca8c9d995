"""The real engine with the trained model and the real app, started once for the session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.models import case_type_model, letter_model
from tests.support.naming import unique
from tests.support.stack import MODEL, Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not MODEL.exists():
        pytest.fail("no trained model: run bin/setup (bin/test does) before the integration tests")
    # The app refuses to start without its case-type and letter models; a worktree whose set-up
    # predates them gets them trained for the session.
    os.environ.setdefault("CASE_TYPE_MODEL_PATH", str(case_type_model(tmp_path_factory.mktemp("case_types"))))
    os.environ.setdefault("LETTER_MODEL_PATH", str(letter_model(tmp_path_factory.mktemp("letters"))))
    running = Stack(workdir=tmp_path_factory.mktemp("stack"))
    try:
        running.start()
        yield running
    finally:
        running.stop()
        for log in ("engine.log", "app.log"):
            path = Path(running.workdir) / log
            if path.exists():
                print(f"--- tail of {log} ---")
                print("\n".join(path.read_text(errors="replace").splitlines()[-15:]))


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright, one per test (the console's browser tests)."""
    from playwright.sync_api import sync_playwright

    from tests.integration.test_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def sender() -> str:
    """A fresh REST sender id, so each test is a new citizen."""
    return unique("test")


@pytest.fixture
async def chat(stack: Stack) -> AsyncIterator[Any]:
    """A new web chat citizen: a fresh socket that said hello without a session."""
    from tests.integration.test_webchat import open_chat

    async with open_chat(stack) as client:
        await client.hello()
        yield client
