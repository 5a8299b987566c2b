"""Loaded by every Python process that ``gfprobe record`` starts (its folder is put first on
PYTHONPATH). It arms recording, then runs the sitecustomize it shadows, if there is one.

Ctrl-C is held back while gfprobe's part runs: a KeyboardInterrupt raised there would be Python's
"Fatal Python error: init_import_site", a traceback through gfprobe, and exit 1. A Ctrl-C that
came meanwhile ends the process quietly with 130, before the command's own code (which it would
have interrupted anyway).
"""

import _signal  # the interpreter's own, already loaded: nothing to import before the mask

_HELD = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})

import importlib.machinery  # noqa: E402 (after the mask, on purpose)
import importlib.util  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def _arm(config: str) -> None:
    try:
        from gfprobe.bootstrap.autoattach import install

        install(config)
    except (Exception, SystemExit) as exc:  # a plugin's sys.exit() must not end the command
        sys.stderr.write(f"gfprobe: cannot record in this Python ({sys.executable}): {exc}\n")


def _release_sigint() -> None:
    if _signal.SIGINT in _HELD:  # blocked by whoever started us: not ours to release
        return
    if _signal.SIGINT in _signal.sigpending():
        os._exit(EXIT_INTERRUPTED)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGINT})


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


try:
    if os.environ.get("GFPROBE_RECORD"):
        _arm(os.environ["GFPROBE_RECORD"])
finally:
    _release_sigint()
_chain()
