"""Shared pytest configuration. Fixtures live in topic modules, loaded as plugins.

Tests live in lanes, one folder each (CONTRIBUTING.md, "Tests"): ``unit`` (pure: no process,
no socket), ``media`` (real ffmpeg), ``aws`` (moto/LocalStack in-process), ``e2e`` (processes,
Prometheus, the browser) and ``image`` (the built image).
"""

import os
from typing import Any

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


# Modules that share one session-scoped fixture too costly to build twice: under
# pytest-xdist (`make test`: -n 2 --dist loadscope) they run on the same worker.
SHARED_SESSION_GROUPS = {
    # hostile_run: the whole hostile corpus through one worker process.
    "hostile-corpus": (
        "tests/e2e/test_hostile_end_to_end.py",
        "tests/e2e/test_hostile_media_worker.py",
        "tests/e2e/test_hostile_messages_worker.py",
    ),
}
_GROUP_OF_MODULE = {m: g for g, modules in SHARED_SESSION_GROUPS.items() for m in modules}


def scheduling_scope(nodeid: str) -> str:
    """The unit pytest-xdist hands to one worker: the test's module, or its shared group."""
    module = nodeid.split("::", 1)[0]
    return _GROUP_OF_MODULE.get(module, module)


# Under pytest-xdist the lanes are handed out slowest first, so the many short unit modules
# fill the end of the run instead of one long e2e module keeping a worker busy alone.
_LANE_ORDER = ("e2e", "media", "aws", "unit")


def _lane_rank(item: pytest.Item) -> int:
    parts = item.nodeid.split("/")
    lane = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
    return _LANE_ORDER.index(lane) if lane in _LANE_ORDER else len(_LANE_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On an xdist worker, order the lanes slowest first (stable: modules keep their order).
    Every worker sorts alike, so their collections stay identical, as xdist requires."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=_lane_rank)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadscope`` by :func:`scheduling_scope`: a module's module-scoped world (one
    worker process for a batch, cached speech cases and merges) is built once, not once per
    worker, and the test ids stay as they are (``loadgroup`` would suffix them)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the lanes' order (see _LANE_ORDER)

    class ModuleScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return scheduling_scope(nodeid)

    return ModuleScheduling(config, log)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``@pytest.mark.anyio``) run on asyncio, the backend aiobotocore needs."""
    return "asyncio"
