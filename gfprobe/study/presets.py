"""The built-in studies (TOML files next to this module; copy one to start your own)."""

from __future__ import annotations

from importlib import resources

from gfprobe.errors import ConfigError
from gfprobe.study.config import Study, parse_study

PRESETS = ("quick", "paper-mlp", "paper-cnn")


def preset_text(name: str) -> str:
    """The preset's TOML source."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)} (see 'gfprobe scsdc presets')")
    return resources.files("gfprobe.study").joinpath("presets", f"{name}.toml").read_text(encoding="utf-8")


def load_preset(name: str) -> Study:
    import tomllib

    return parse_study(tomllib.loads(preset_text(name)), source=f"preset {name}", default_name=name)


def describe(name: str, full: bool = False) -> str:
    """The preset's one-line summary (its first comment line), or its whole leading comment."""
    lines = []
    for line in preset_text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return " ".join(line for line in lines if line) if full else lines[0]
