"""``GfprobeCallback`` for ``lightning.pytorch`` (``import lightning.pytorch as pl``)."""

from __future__ import annotations

from lightning.pytorch import Callback

from gfprobe_lightning._core import CallbackCore


class GfprobeCallback(CallbackCore, Callback):
    """Records what ``self.log`` logs and the hyper-parameters into the gfprobe run of this
    process (``ModelPruning``'s masks gfprobe takes up by itself)::

        trainer = Trainer(callbacks=[GfprobeCallback()])            # under gfprobe record / watch
        trainer = Trainer(callbacks=[GfprobeCallback(out="run.h5")])  # records the fit by itself

    Under ``gfprobe record`` every Trainer gets one without asking. Logged values are recorded
    as gfprobe metrics at ``trainer.global_step`` (optimizer steps taken), exactly once each:
    those Lightning hands its loggers, at their cadence (``log_every_n_steps``). The
    hyper-parameters that Lightning hands its loggers become run attributes at fit start.

    Args:
        out: when nothing records already, record each fit into this run file with
            ``gfprobe.watch`` from fit start to fit end (metrics of a later ``trainer.test()``
            are not in it: wrap fit and test in ``gfprobe.watch`` for that). Ignored while
            something records (``gfprobe record``, ``gfprobe.watch``).
        every: ``gfprobe.watch``'s ``every``, with ``out``.
        masks: ``gfprobe.watch``'s ``masks``, with ``out``.
        attrs: ``gfprobe.watch``'s ``attrs``, with ``out``.
    """

