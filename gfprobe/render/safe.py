"""Strings from run files and paths, made safe to print.

A run file is data, and so is a file name: either can hold terminal escape sequences (clear the
screen, set the window title, open an OSC-8 hyperlink), rich markup, or bidi overrides that
reorder what a line seems to say. Every renderer passes such strings through :func:`printable`,
and hands rich a :class:`~rich.text.Text` (:func:`text`), which rich never parses as markup.
"""

from __future__ import annotations

from rich.text import Text

# Shown as Python writes them; every other non-printing character as \xHH, \uHHHH or \UHHHHHHHH.
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Markdown that could turn data into a link, an image, HTML, code, emphasis, maths or a new cell.
_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*[]<>|~$"})


# What makes a CI log line a GitHub Actions workflow command: '::' at its start (after spaces) or
# '##[' anywhere. A table can wrap any part of a string to the start of a line, so every '::' is
# broken up. Shown with the same escapes as control characters.
_WORKFLOW_OPENERS = {"::": ":\\x3a", "##[": "##\\x5b"}


def printable(value: object) -> str:
    """``value`` as text that a terminal or a CI log shows and never acts on.

    Non-printing characters are shown as escapes (see :func:`visible`), and so is a character of
    each ``::`` and ``##[``, which GitHub Actions reads as the start of a workflow command.
    Other printable text, backslashes included, is returned unchanged.
    """
    text = visible(value)
    for opener, shown in _WORKFLOW_OPENERS.items():
        text = text.replace(opener, shown)
    return text


def inline(value: object) -> str:
    """Like :func:`printable`, for text that follows a fixed prefix on a line of its own
    (``gfprobe: <message>``): there ``::`` starts nothing (``c10::Error`` stays as it is), while
    ``##[`` does anywhere."""
    return visible(value).replace("##[", _WORKFLOW_OPENERS["##["])


def visible(value: object) -> str:
    """``value`` as text with every non-printing character shown as a visible escape.

    Non-printing means what :meth:`str.isprintable` says: C0 and C1 controls (ESC, BEL, CR, LF,
    CSI), DEL, format characters such as bidi overrides and zero-width joiners, line and paragraph
    separators, unassigned code points and lone surrogates (undecodable bytes in a file name).
    For text that gets GitHub's own escaping next (``check --format github``).
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def text(value: object, style: str = "") -> Text:
    """A rich Text of ``value`` made printable: shown as it is, never read as markup or emoji."""
    return Text(printable(value), style=style)


def markdown(value: object) -> str:
    """``value`` as Markdown that reads as plain text and keeps a table cell one cell."""
    return printable(value).translate(_MARKDOWN)


class Markdown(str):
    """Markdown a renderer wrote itself (bold, numbers); tables take it as it is."""

    __slots__ = ()
