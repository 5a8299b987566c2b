"""Only the C extension lives here; everything else is in pyproject.toml.

``_gradstats`` is gfprobe's one-pass CPU statistics kernel. It is optional: without a C
compiler gfprobe installs anyway and computes the same statistics with BLAS (three passes over
each gradient instead of one; see docs/recording.md, "Cost").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gfprobe.adapters._gradstats",
            sources=["gfprobe/adapters/_gradstats.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-psabi"],
            optional=True,
        )
    ]
)
