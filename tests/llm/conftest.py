from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.llm.fake_provider import FakeProvider


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    server = FakeProvider()
    try:
        yield server
    finally:
        server.close()
