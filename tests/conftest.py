"""Shared pytest configuration. Fixtures live in topic modules, loaded as plugins."""

import os

import pytest

# The image tests need a built image: `make image-test` builds one and names it in
# KOMOREBI_IMAGE (the plain suite does not collect them; `make test` runs both).
collect_ignore = [] if os.environ.get("KOMOREBI_IMAGE") else ["test_image.py"]

pytest_plugins = [
    "tests.fixtures_media",
    "tests.fixtures_aws",
    "tests.hostile_corpus",
]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, the backend aiobotocore needs."""
    return "asyncio"
