"""Loaded by every Python process that ``gfprobe record`` starts (its folder is put first on
PYTHONPATH). It arms recording, then runs the sitecustomize it shadows, if there is one."""

import importlib.machinery
import importlib.util
import os
import sys

if os.environ.get("GFPROBE_RECORD"):
    try:
        from gfprobe.bootstrap.autoattach import install

        install(os.environ["GFPROBE_RECORD"])
    except Exception as exc:
        sys.stderr.write(f"gfprobe: cannot record in this Python ({sys.executable}): {exc}\n")


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_chain()
