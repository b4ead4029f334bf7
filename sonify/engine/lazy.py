"""Registries the engine reads but does not own, asked when first read.

The engine imports nothing above it (tests/test_layout.py), yet config checks need lists that live with
the code that uses them (the recipes live with the corpora, in `sonify.sources`). `RolesOf` names such a
registry by module and attribute and reads it when asked, so the list has one definition.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping


class RolesOf(Mapping):
    """role -> names, from a registry `{name: role}` at `module.attribute`, read when asked."""

    def __init__(self, module: str, attribute: str):
        self.module, self.attribute = module, attribute

    def _load(self) -> dict[str, list[str]]:
        roles: dict[str, list[str]] = {}
        for name, role in getattr(importlib.import_module(self.module), self.attribute).items():
            roles.setdefault(role, []).append(name)
        return roles

    def __getitem__(self, role: str) -> list[str]:
        return self._load().get(role, [])

    def __iter__(self):
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())
