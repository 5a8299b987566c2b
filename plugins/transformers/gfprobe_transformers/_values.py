"""What the callback stores, as plain data: no transformers, no torch (cheap to import and test)."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

# Substrings of argument names whose values must never land in a run file (a run file is shared).
_SECRET_PARTS = ("password", "secret", "api_key", "apikey", "credential")


def is_recording() -> bool:
    """Whether a gfprobe recording is active in this process (``gfprobe record`` or ``gfprobe.watch``)."""
    from gfprobe.capture import session

    return session.recording()


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a Trainer's ``logs`` or ``metrics``, as floats; text, booleans,
    ``None`` and containers are left out. 0-d tensors and NumPy scalars count as numbers."""
    out: dict[str, float] = {}
    for name, value in values.items():
        item = getattr(value, "item", None)
        if callable(item) and getattr(value, "ndim", 0) == 0:
            try:
                value = item()
            except (RuntimeError, ValueError, TypeError):  # e.g. a tensor of several elements
                continue
        if isinstance(name, str) and name and isinstance(value, Real) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def is_secret(name: str) -> bool:
    """Whether an argument holds a credential: ``hub_token`` and every other ``*_token``, or a
    name that says password, secret, API key or credential."""
    lowered = name.lower()
    return lowered.endswith("_token") or lowered == "token" or any(part in lowered for part in _SECRET_PARTS)


def training_attrs(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``TrainingArguments.to_dict()`` as run attributes: secrets and unset (``None``) arguments
    left out; numbers, booleans and text kept as they are, anything else as JSON-able data
    (gfprobe stores lists and tables as JSON text)."""
    out: dict[str, Any] = {}
    for name, value in arguments.items():
        if not isinstance(name, str) or not name or is_secret(name) or value is None:
            continue
        out[name] = _plain(value)
    return out


def model_attrs(model: Any) -> dict[str, Any]:
    """A model's key facts: its class, ``config.model_type``, ``config._name_or_path`` (when set)
    and its number of parameters (each shared tensor once)."""
    out: dict[str, Any] = {"model_class": type(model).__name__}
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str) and model_type:
        out["model_type"] = model_type
    name_or_path = getattr(config, "_name_or_path", None)
    if isinstance(name_or_path, str) and name_or_path:
        out["model_name_or_path"] = name_or_path
    count = _num_parameters(model)
    if count is not None:
        out["num_parameters"] = count
    return out


def _num_parameters(model: Any) -> int | None:
    counter = getattr(model, "num_parameters", None)  # PreTrainedModel's: shared tensors once
    if callable(counter):
        try:
            return int(counter())
        except Exception:  # an unusual model: fall back to counting its parameters
            pass
    parameters = getattr(model, "parameters", None)
    if not callable(parameters):
        return None
    return sum(int(p.numel()) for p in parameters())


def _plain(value: Any) -> Any:
    """Scalars, text and None as they are, mappings and sequences as JSON-able data, the rest as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if not (isinstance(k, str) and is_secret(k))}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)
