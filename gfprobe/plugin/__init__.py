"""gfprobe's plugin mechanism: pluggy hooks (``spec``) and the plugins installed (``manager``)."""

from gfprobe.plugin.spec import ModuleMask, hookimpl

__all__ = ["ModuleMask", "hookimpl"]
