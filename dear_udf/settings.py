"""Each setting defined once: its dataclass field is the YAML key and carries its flag.

A field of ``JobConfig``, ``ModelSpec``, ``Layout``, ``TrackingSpec`` or ``ServeSettings``
that has a command line flag declares it with ``metadata=flag("--top-k", type=int,
help=...)``; the flag's destination is the field's name. ``add_flags`` adds a class's flags
to a parser, their help ending in the field's default, and ``flag_values`` reads back the
ones given, so flags, YAML keys, defaults and the config classes cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any


def flag(*names: str, **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata declaring the field's command line flag (``argparse`` arguments).

    Write the help without the default: ``add_flags`` adds it from the field. A help that
    must name a value defined elsewhere may be a function returning the text, called when
    the parser is built.

    Example:
        >>> top_k: int = field(default=10, metadata=flag("--top-k", type=int, help="rows kept per query"))
    """
    return {"flag": (names, argparse_kwargs)}


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls``, for a keyword that must equal it.

    Example:
        >>> default_of(JobConfig, "batch_size")
        128
    """
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    if found.default is dataclasses.MISSING:
        raise TypeError(f"{cls.__name__}.{name} has no plain default.")
    return found.default


def add_flags(parser: Any, cls: type, *, only: Iterable[str] | None = None) -> None:
    """Add the flags of ``cls``'s fields (those named in ``only``, when given) to ``parser``.

    A flag not given reads as None, so the YAML file or the field's default decides. The
    help ends in ``(default: X)`` for a field whose default is a value (not None, not a
    switch, not computed).
    """
    for f in dataclasses.fields(cls):
        if "flag" not in f.metadata or (only is not None and f.name not in only):
            continue
        names, kwargs = f.metadata["flag"]
        parser.add_argument(*names, **{**kwargs, "help": _help(f, kwargs), "default": None, "dest": f.name})


def _help(f: dataclasses.Field, kwargs: dict[str, Any]) -> str | None:
    text = kwargs.get("help")
    if callable(text):
        text = text()
    shown = f.default not in (dataclasses.MISSING, None) and kwargs.get("action") not in ("store_true", "store_false")
    if text is None or not shown:
        return text
    return f"{text} (default: {str(f.default).replace('%', '%%')})"


def flag_values(args: Any, cls: type) -> dict[str, Any]:
    """The flags of ``cls`` given on the command line, by field name."""
    names = [f.name for f in dataclasses.fields(cls) if "flag" in f.metadata]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
