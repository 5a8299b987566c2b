"""Reading a TOML file (check settings, study files): one clear message whatever is wrong with it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from gfprobe.errors import ConfigError


def read_toml(path: Path, shown: str, what: str = "file") -> dict[str, Any]:
    """The document in ``path``.

    Args:
        path: The file to read.
        shown: How messages name it, e.g. ``"--config check.toml"``.
        what: What a missing file is called, e.g. ``"study file"``.

    Raises:
        ConfigError: The file is missing, unreadable, not UTF-8 or not TOML that Python can hold.
    """
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such {what}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{shown}: not valid TOML ({exc})") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"{shown}: arrays or inline tables nested too deeply to read; flatten them") from None
    except ValueError as exc:  # valid TOML beyond Python's limits, e.g. an integer of over 4,300 digits
        raise ConfigError(f"{shown}: a value cannot be read ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read it ({exc.strerror or exc}); check its permissions") from None
