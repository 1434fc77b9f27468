"""Shared pytest configuration. Fixtures live in topic modules, loaded as plugins."""

pytest_plugins = [
    "tests.fixtures_media",
    "tests.fixtures_aws",
]
