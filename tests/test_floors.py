"""Every dependency floor in pyproject.toml is a version the code was run with (issue 20).

A floor promises users that version works. The suite runs with the versions pinned in
constraints.txt (torch: the version scripts/setup.sh installs), so each floor must be
that version: a floor below it is a release nobody has run (``transformers>=4.48`` once
allowed a release without ``from_pretrained(dtype=...)``, which model/load.py calls).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    torch = re.search(r'"torch==([^"]+)"', (ROOT / "scripts" / "setup.sh").read_text())
    pins["torch"] = torch.group(1)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        found += [Requirement(r) for r in extra if not r.startswith("dear-rerank")]
    return found


def test_every_floor_is_the_version_the_suite_runs_with():
    pins = _pins()
    checked = []
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        floors = [s.version for s in requirement.specifier if s.operator in (">=", "==")]
        assert floors, f"{requirement}: give a floor (the version the suite runs with, {pins.get(name)})"
        assert name in pins, f"{requirement}: pin the version the suite runs with in constraints.txt"
        # "2.13" admits the pinned 2.13.0 and nothing below it.
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{requirement} excludes the pinned {pins[name]}"
        for floor in floors:
            assert tuple(int(p) for p in floor.split(".")) == tuple(int(p) for p in pins[name].split("+")[0].split("."))[: len(floor.split("."))], (
                f"{requirement}: the floor {floor} is not the version the suite runs with ({pins[name]})"
            )
        checked.append(name)
    assert {"torch", "transformers", "peft", "tokenizers", "deltalake", "pyarrow"} <= set(checked)
