"""Benchmarks for promptd, run with ``python -m bench [name|all]`` (see bench/__main__.py)."""
