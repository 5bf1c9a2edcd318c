"""Stand-ins for modules not installed here (vLLM, torch), for tests of the code that imports them lazily."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import pytest


def install_modules(monkeypatch: pytest.MonkeyPatch, modules: dict[str, dict[str, Any]]) -> None:
    """Each module name with its attributes, for this test only; its parent packages are made where not given,
    and each module is an attribute of its parent, as an import leaves them."""
    made: dict[str, ModuleType] = {}
    for name in modules:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            made.setdefault(".".join(parts[:depth]), ModuleType(".".join(parts[:depth])))
    for name, module in made.items():
        for attr, value in modules.get(name, {}).items():
            setattr(module, attr, value)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(made[parent], child, module)
        monkeypatch.setitem(sys.modules, name, module)
