"""Test-wide configuration: fixtures live in tests/fixtures_*.py, one file per seam."""

import os

from hypothesis import settings

pytest_plugins = [
    "tests.fixtures_clip",
    "tests.fixtures_ollama",
    "tests.fixtures_images",
    "tests.fixtures_redis",
    "tests.fixtures_api",
]

# Property tests stay bounded so `make test` stays fast: no deadline (no timing asserts), a
# modest number of examples, no example database written into the checkout.
# HYPOTHESIS_PROFILE=thorough runs ten times as many.
settings.register_profile("promptd", max_examples=100, deadline=None, database=None)
settings.register_profile("thorough", max_examples=1000, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "promptd"))
