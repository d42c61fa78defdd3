"""`litefs version`."""
from __future__ import annotations

import argparse

from litefs import __version__
from litefs import native


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print the version and which kernels are in use")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    clmul = " (pclmul)" if getattr(native.crc64, "HAVE_CLMUL", False) else ""
    print(f"litefs {__version__}, kernels={native.IMPLEMENTATION}{clmul}")
    return 0
