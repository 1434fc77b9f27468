"""Shared pytest configuration. Fixtures live in topic modules, loaded as plugins.

Tests live in lanes, one folder each (CONTRIBUTING.md, "Tests"): ``unit`` (pure: no process,
no socket), ``media`` (real ffmpeg), ``aws`` (moto/LocalStack in-process), ``e2e`` (processes,
Prometheus, the browser) and ``image`` (the built image).
"""

import os

import pytest

# The image lane needs a built image: `make test-image` builds one and names it in
# KOMOREBI_IMAGE (the plain suite does not collect it; `make test` runs both).
collect_ignore = [] if os.environ.get("KOMOREBI_IMAGE") else ["image"]

pytest_plugins = [
    "tests.harness.fixtures_media",
    "tests.harness.fixtures_aws",
    "tests.harness.hostile_corpus",
    "pytester",  # tests/unit/test_lane_guard.py runs the unit lane's guard on inner sessions
]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, the backend aiobotocore needs."""
    return "asyncio"
