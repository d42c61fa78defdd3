"""Build the Cython hot paths in pyx/ into extension modules of the litefs package.

Every compiled module has a plain-Python twin (litefs/_<name>_py.py). A failed compile is
tolerated only when LITEFS_REQUIRE_EXTENSIONS is unset, so a developer without a compiler can
still run the pure twins; CI sets it, and a broken build fails instead of silently going slow.
"""
import os

from setuptools import Extension, setup

REQUIRED = os.environ.get("LITEFS_REQUIRE_EXTENSIONS") == "1"
CFLAGS = ["-O3", "-Wall", "-Wno-unused-function"]


def extension(name: str, sources: list[str]) -> Extension:
    return Extension(
        f"litefs._{name}",
        sources,
        include_dirs=["pyx"],
        extra_compile_args=CFLAGS,
        optional=not REQUIRED,
    )


def extensions() -> list[Extension]:
    from Cython.Build import cythonize

    exts = [
        extension("crc64", ["pyx/crc64.pyx", "pyx/crc64_impl.c"]),
        extension("ltxcodec", ["pyx/ltxcodec.pyx", "pyx/crc64_impl.c"]),
        extension("pagediff", ["pyx/pagediff.pyx", "pyx/crc64_impl.c"]),
        extension("walsum", ["pyx/walsum.pyx"]),
    ]
    return cythonize(
        exts,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )


setup(ext_modules=extensions())
