"""Test-wide configuration: fixtures live in tests/fixtures_*.py, one file per seam."""

pytest_plugins = [
    "tests.fixtures_clip",
    "tests.fixtures_ollama",
    "tests.fixtures_images",
    "tests.fixtures_redis",
    "tests.fixtures_api",
]
