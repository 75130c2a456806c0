"""Placeholder: being built."""

from __future__ import annotations


def add_arguments(parser) -> None:
    pass


def main(args) -> int:
    raise SystemExit("not built yet")
