"""Each setting defined once: its dataclass field is the YAML key and carries its flag.

A field of ``JobConfig``, ``ModelSpec``, ``Layout`` or ``TrackingSpec`` that has a command
line flag declares it with ``metadata=flag("--top-k", type=int, help=...)``; the flag's
destination is the field's name. ``add_flags`` adds a class's flags to a parser and
``flag_values`` reads back the ones given, so flags, YAML keys and the config classes
cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def flag(*names: str, **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata declaring the field's command line flag (``argparse`` arguments)."""
    return {"flag": (names, argparse_kwargs)}


def add_flags(parser: Any, cls: type, **defaults: Any) -> None:
    """Add the flags of ``cls``'s fields to ``parser``. A flag not given reads as None,
    so the YAML file or the field's default decides; ``defaults`` (field name -> value)
    sets a parser default instead, for commands without a YAML file."""
    for f in dataclasses.fields(cls):
        if "flag" not in f.metadata:
            continue
        names, kwargs = f.metadata["flag"]
        kwargs = {"default": defaults.get(f.name), **kwargs, "dest": f.name}
        parser.add_argument(*names, **kwargs)


def flag_values(args: Any, cls: type) -> dict[str, Any]:
    """The flags of ``cls`` given on the command line, by field name."""
    names = [f.name for f in dataclasses.fields(cls) if "flag" in f.metadata]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
