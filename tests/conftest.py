"""Shared pytest configuration. Fixtures live in topic modules, loaded as plugins."""

import pytest

pytest_plugins = [
    "tests.fixtures_media",
    "tests.fixtures_aws",
    "tests.hostile_corpus",
]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, the backend aiobotocore needs."""
    return "asyncio"
