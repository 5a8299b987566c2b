"""Only the C extension lives here; everything else is in pyproject.toml.

``_gradstats`` is gfprobe's one-pass CPU statistics kernel. It is optional: without a C
compiler gfprobe installs anyway and computes the same statistics with BLAS (three passes over
each gradient instead of one; see docs/recording.md, "Cost").
"""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gfprobe.adapters._gradstats",
            sources=["gfprobe/adapters/_gradstats.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-psabi"],
            # dlopen/dlsym find torch's OpenMP runtime; glibc before 2.34 keeps them in libdl.
            libraries=["dl"] if sys.platform.startswith("linux") else [],
            optional=True,
        )
    ]
)
