"""``GfprobeCallback``: a Trainer's logged metrics and its arguments, in the gfprobe run."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from gfprobe_transformers._values import is_recording, model_attrs, numeric, training_attrs

if TYPE_CHECKING:
    from gfprobe.adapters.torch_probe import Probe
    from gfprobe.schedule import Schedule

log = logging.getLogger("gfprobe")


class GfprobeCallback(TrainerCallback):
    """Puts what a ``transformers.Trainer`` logs into the active gfprobe run.

    * Every numeric value of ``on_log`` and ``on_evaluate`` (``loss``, ``grad_norm``,
      ``learning_rate``, ``epoch``, ``eval_*`` including a ``compute_metrics``' values, the final
      ``train_*`` summary) is a metric at ``state.global_step``, the optimizer steps taken so
      far: gfprobe's own step numbering, where the metrics of step *k* come after *k* optimizer
      steps. A value the Trainer hands over twice at one step (``on_log`` and ``on_evaluate``
      get the same evaluation metrics) is stored once.
    * At ``on_train_begin``, before the first optimizer step, the ``TrainingArguments``
      (``args.to_dict()``, secrets and unset arguments left out) and the model's ``model_class``,
      ``model_type``, ``model_name_or_path`` and ``num_parameters`` become run attributes.

    It records no gradients: gfprobe's optimizer hooks do. Under ``gfprobe record`` every Trainer
    gets one by itself; with ``gfprobe.watch`` add it yourself. With ``out``, it starts recording
    itself (``gfprobe.watch(model, out=out)``) when training begins and nothing records yet, and
    finalises the run file when training ends.

    Args:
        out: the run file to record into when no recording is active; ``None`` only logs into
            an active one (a silent no-op without one).
        every: with ``out``: record the gradients of every N-th optimizer step (or a schedule).
        masks: with ``out``: ``gfprobe.watch``'s ``masks``.
    """

    def __init__(self, out: str | Path | None = None, *, every: int | Schedule = 1,
                 masks: str | Mapping[str, Any] = "auto") -> None:
        self.out = None if out is None else Path(out)
        self.every = every
        self.masks = masks
        self._probe: Probe | None = None
        self._last: dict[str, tuple[int, float]] = {}  # name -> (step, value) last stored
        self._broken = False
        # Where run attributes go; under gfprobe record the plugin sets Recording.set_attrs,
        # which leaves the user's --attr values alone.
        self._set_attrs: Callable[[Mapping[str, Any]], None] | None = None

    # -- Trainer events --------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, **kwargs: Any) -> None:
        self._guarded("on_train_begin", lambda: self._begin(args, model))

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self._guarded("on_log", lambda: self._store(logs, state.global_step))

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self._guarded("on_evaluate", lambda: self._store(metrics, state.global_step))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        probe, self._probe = self._probe, None
        if probe is None:
            return
        try:  # even after a failure elsewhere: the run file must be finalised
            probe.close()
        except Exception as exc:
            log.warning("gfprobe: GfprobeCallback could not finalise %s (%s: %s)", self.out, type(exc).__name__,
                        " ".join(str(exc).split()))

    # -- the work --------------------------------------------------------------------------------
    def _begin(self, args: TrainingArguments, model: Any) -> None:
        if self.out is not None and self._probe is None:
            if is_recording():
                log.warning("gfprobe: a recording is already active; GfprobeCallback(out=%s) logs into it "
                            "and writes no file of its own", self.out)
            else:
                import gfprobe

                self._probe = gfprobe.watch(model, out=self.out, every=self.every, masks=self.masks)
        if not is_recording():
            return
        from gfprobe.capture import session

        attrs = training_attrs(args.to_dict())  # type: ignore[no-untyped-call]  # untyped in transformers
        if model is not None:
            attrs.update(model_attrs(model))
        (self._set_attrs or session.set_attrs)(attrs)

    def _store(self, values: Mapping[str, Any] | None, step: int) -> None:
        if not values or not is_recording():
            return
        new = {}
        for name, value in numeric(values).items():
            last = self._last.get(name)
            if last is not None and last[0] == step and _same(last[1], value):
                continue  # handed over twice (on_log, then on_evaluate): one value, stored once
            self._last[name] = (step, value)
            new[name] = value
        if new:
            from gfprobe.capture import session

            session.log_values(new, step=step)

    def _guarded(self, event: str, work: Callable[[], object]) -> None:
        """Run ``work``; a failure is one warning line and stops this callback, never the training."""
        if self._broken:
            return
        try:
            work()
        except Exception as exc:
            self._broken = True
            log.warning("gfprobe: GfprobeCallback.%s failed (%s: %s); training goes on without its metrics",
                        event, type(exc).__name__, " ".join(str(exc).split()))


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
