"""The optimizer step hooks every probe in a process shares, invisible to ``torch.compile``.

Dynamo inlines optimizer step hooks into the graphs it compiles, guards on the hooks dictionary
and on every Python value a hook reads, and breaks the graph at whatever it cannot trace. A hook
that read gfprobe's state (counters, clocks, pids, the statistics kernel) added graph breaks
and recompiled at every step. So:

* there is one module-level pre-hook, registered when the first probe starts and never removed:
  Dynamo guards on the hooks dictionary's keys, so removing the hook and registering it again
  would recompile every compiled step at every new probe. Without a probe it does nothing
  eagerly; compiled code keeps calling the op, whose body then does nothing (about 20 µs);
* under tracing it reads no gfprobe state: it emits one opaque custom op, ``gfprobe::observe``,
  with the optimizer's gradients as inputs. The op's body runs at run time, once per compiled
  step, and records exactly as the eager path does. Its ORDERED effect keeps it in the graph
  (an op that returns nothing would be dead code) and in program order; functionalization hands
  it the gradients as they are at that point of the step;
* the post-hook, needed only for ``step(closure)`` of optimizers that never call their closure,
  is registered the first time an eager closure step is seen: one more registered hook would
  cost a recompile to functions that step several optimizers.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

from gfprobe.adapters.torch_local import is_dtensor

if TYPE_CHECKING:
    from gfprobe.adapters.torch_probe import Probe

StepArgs = tuple[tuple[Any, ...], dict[str, Any]]

_probes: list[Probe] = []  # probes recording now; changed eagerly only, never read under tracing
_handles: dict[str, RemovableHandle] = {}
_lock = threading.Lock()
# Optimizers by id, for the op's body: a graph can hold an int, not an object.
_optimizers: weakref.WeakValueDictionary[int, torch.optim.Optimizer] = weakref.WeakValueDictionary()


def attach(probe: Probe) -> None:
    with _lock:
        _probes.append(probe)
        if "pre" not in _handles:
            _handles["pre"] = register_optimizer_step_pre_hook(_pre_hook)


def detach(probe: Probe) -> None:
    with _lock:
        if probe in _probes:
            _probes.remove(probe)


def _ensure_post_hook() -> None:
    with _lock:
        if _probes and "post" not in _handles:
            _handles["post"] = register_optimizer_step_post_hook(_post_hook)


# -- the hooks ------------------------------------------------------------------------------------
def _pre_hook(optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> StepArgs | None:
    if torch.compiler.is_compiling():
        return _traced_step(optimizer, args, kwargs)
    changed: StepArgs | None = None
    for probe in tuple(_probes):
        current = changed or (args, kwargs)
        try:
            changed = probe.before_step(optimizer, *current) or changed
        except Exception as exc:  # never into the user's step: that probe stops, training goes on
            probe.fail(exc)
    if changed is not None:
        _ensure_post_hook()
    return changed


def _post_hook(optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
    if torch.compiler.is_compiling():
        return
    for probe in tuple(_probes):
        try:
            probe.after_step(optimizer)
        except Exception as exc:
            probe.fail(exc)


# -- under torch.compile ------------------------------------------------------------------------
# Never captured into a CUDA graph (mode="reduce-overhead"): a replay would skip the body.
_UNSAFE_FOR_CUDA_GRAPHS = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()


@torch.library.custom_op("gfprobe::observe", mutates_args=(), tags=_UNSAFE_FOR_CUDA_GRAPHS)
def _observe(key: int, grads: list[torch.Tensor | None]) -> None:
    """Record a compiled step. ``key`` names the optimizer (see :func:`_key_of`); a key this process
    does not know (compiled code from another process's cache) records nothing."""
    optimizer = _optimizers.get(key)
    if optimizer is None:
        return
    for probe in tuple(_probes):
        try:
            probe.record_compiled(optimizer, grads)
        except Exception as exc:  # never into the user's compiled step
            probe.fail(exc)


@_observe.register_fake
def _observe_fake(key: int, grads: list[torch.Tensor | None]) -> None:
    return None


def _keep_in_graph() -> None:
    try:
        from torch._library.effects import EffectType
    except ImportError:  # a torch without effect registration: Dynamo then drops the op
        return
    _observe.register_effect(EffectType.ORDERED)


_keep_in_graph()


def _key_of(optimizer: torch.optim.Optimizer) -> int:
    """Runs for real while tracing (the result is a constant of the graph, guarded by the identity
    of the optimizer, which the optimizer's own frames already guard on)."""
    _optimizers[id(optimizer)] = optimizer
    return id(optimizer)


# What torch._dynamo.assume_constant_result does, without importing torch._dynamo (about 2 s)
# into every process that imports torch under 'gfprobe record': launchers, DataLoader workers.
_key_of._dynamo_marked_constant = True  # type: ignore[attr-defined]


def gradients(optimizer: torch.optim.Optimizer) -> list[torch.Tensor | None]:
    """Every parameter's gradient, in the optimizer's parameter order."""
    # Through __dict__: Dynamo's view of ``optimizer.param_groups`` guards on every value of every
    # group, so a learning rate changed by a scheduler would recompile.
    attrs = optimizer.__dict__
    groups = attrs["param_groups"] if "param_groups" in attrs else optimizer.param_groups  # noqa: SIM401 (lazy)
    return [p.grad for group in groups for p in group["params"]]


def _emit(optimizer: torch.optim.Optimizer) -> None:
    torch.ops.gfprobe.observe(_key_of(optimizer), [_plain(g) for g in gradients(optimizer)])


def _plain(grad: torch.Tensor | None) -> torch.Tensor | None:
    """What the op may take: a plain tensor. Tensor subclasses have no implementation of the op
    (a DTensor would raise in the user's step); a DTensor passes its local shard, other
    subclasses pass nothing and are recorded as missing."""
    if grad is None or type(grad) is torch.Tensor:
        return grad
    if is_dtensor(grad):
        local: torch.Tensor = grad.to_local()  # type: ignore[attr-defined]
        return local
    return None


def _traced_step(optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> StepArgs | None:
    closure = closure_of(args, kwargs)
    if closure is None:
        _emit(optimizer)
        return None
    done = [False]  # local to this traced call: nothing to guard on

    def observed() -> Any:
        result = closure()
        if not done[0]:
            done[0] = True
            _emit(optimizer)
        return result

    return with_closure(args, kwargs, observed)


# -- step(closure) arguments ----------------------------------------------------------------------
# Step hooks get step()'s arguments with the optimizer itself first: args = (self, closure?, ...).
def closure_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Callable[[], Any] | None:
    closure = kwargs["closure"] if "closure" in kwargs else args[1] if len(args) > 1 else None
    return closure if callable(closure) else None


def with_closure(args: tuple[Any, ...], kwargs: dict[str, Any], closure: Callable[[], Any]) -> StepArgs:
    """The step's arguments with its closure replaced, passed the way the caller passed it."""
    if "closure" in kwargs:
        return args, {**kwargs, "closure": closure}
    return (args[0], closure, *args[2:]), kwargs
