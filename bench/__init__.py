"""Benchmarks of the scoring core (``python bench/run.py``); results in ``bench/results``."""
