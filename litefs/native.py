"""Chooses the compiled kernels (built from pyx/) or their plain-Python twins.

LITEFS_PURE=1 selects the twins. Otherwise the compiled module is used; if it is missing, the
twin is used unless LITEFS_REQUIRE_EXTENSIONS=1, which makes that an ExtensionError (CI sets it,
so a build that did not compile fails instead of running slowly).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

from litefs.errors import ExtensionError

MODULES = ("crc64", "ltxcodec", "pagediff", "walsum")


def load(name: str, pure: bool | None = None) -> ModuleType:
    if pure is None:
        pure = os.environ.get("LITEFS_PURE") == "1"
    if pure:
        return importlib.import_module(f"litefs._{name}_py")
    try:
        return importlib.import_module(f"litefs._{name}")
    except ImportError as exc:
        if os.environ.get("LITEFS_REQUIRE_EXTENSIONS") == "1":
            raise ExtensionError(f"compiled module litefs._{name} is not built: {exc}") from exc
        return importlib.import_module(f"litefs._{name}_py")


def check_compiled() -> None:
    """Import every compiled module; raise ExtensionError naming the first that is missing."""
    for name in MODULES:
        try:
            importlib.import_module(f"litefs._{name}")
        except ImportError as exc:
            raise ExtensionError(f"compiled module litefs._{name} is not built: {exc}") from exc


crc64 = load("crc64")
ltxcodec = load("ltxcodec")
pagediff = load("pagediff")
walsum = load("walsum")
IMPLEMENTATION = "pure" if crc64.__name__.endswith("_py") else "compiled"
