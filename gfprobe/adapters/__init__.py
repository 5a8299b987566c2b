"""Adapters turn a framework's gradients into the recorder's per-parameter statistics.

PyTorch is the first one (``gfprobe.adapters.torch_*``); other frameworks plug in through
``plugins/``.
"""
