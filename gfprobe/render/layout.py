"""Tables that fit the terminal: numbers are never cut, headers break only between words.

A number column is exactly as wide as its widest cell, or its header when there is room (rich
never squeezes a column of fixed width, so a number is never folded or cropped). On a narrow
terminal headers wrap at spaces, and a word too long for its column is abbreviated with "…";
columns that still do not fit go on to a further table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from gfprobe.render.safe import printable, text

HEADER_WORD = 20  # longest header word kept whole when the terminal is narrow
_UNLIMITED = 1_000_000  # a width no table reaches
T = TypeVar("T")
Build: TypeAlias = Callable[[Sequence[T], bool, bool], Table]  # (chunk, compact, sample) -> table


@dataclass(frozen=True)
class Column:
    """A column of numbers (or other text that must not be cut) and its header."""

    header: str  # lines apart by "\n"; each line is made printable here
    cells: Sequence[str | Text]
    justify: JustifyMethod = "right"
    wrap: bool = False  # words (a note), not numbers: may wrap at spaces, and is squeezed first

    def width(self, compact: bool) -> int:
        """Its widest cell; or its header's widest line, or (compact) widest word, if wider."""
        lines = [printable(line) for line in self.header.split("\n")]
        head = max(cell_len(line) for line in lines)
        if compact:
            head = min(max(cell_len(word) for line in lines for word in line.split(" ")), HEADER_WORD)
        return max([head, 1, *(_cell_width(cell) for cell in self.cells)])

    def add_to(self, table: Table, compact: bool) -> None:
        if self.wrap:
            width = Column(self.header, ()).width(compact=True)
            table.add_column(header(self.header, width), justify=self.justify, min_width=width, overflow="fold")
            return
        width = self.width(compact)
        table.add_column(header(self.header, width), justify=self.justify, width=width)


def _cell_width(cell: str | Text) -> int:
    return max(cell_len(line) for line in str(cell).split("\n"))


def header(text: str, width: int) -> Text:
    """A header that rich wraps at spaces within ``width``; longer words end in "…"."""
    lines = [" ".join(_abbreviate(word, width) for word in printable(line).split(" "))
             for line in text.split("\n")]
    return Text("\n".join(lines))


def _abbreviate(word: str, width: int) -> str:
    return word if cell_len(word) <= width else set_cell_size(word, max(width - 1, 0)) + "…"


class Label:
    """A row label rich may shorten to ``minimum`` cells (the column's overflow says how).

    rich measures text as no narrower than its longest word, and a run's file name is one long
    word; measured so, a table of long names would never seem to fit a narrow terminal.
    """

    def __init__(self, value: object, minimum: int = 8) -> None:
        self.text = text(value)
        # Measured once: tables are measured several times while they are fitted to the terminal.
        widest = max(map(cell_len, self.text.plain.split("\n")))
        longest_word = max(map(cell_len, self.text.plain.split()), default=widest)
        self.measurement = Measurement(min(longest_word, minimum), widest)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.text

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return self.measurement


def fits(console: Console, table: Table) -> bool:
    """Whether the table's narrowest layout fits the console, so that rich squeezes no column.

    When even the narrowest is too wide, rich shrinks every column, fixed ones too, and a number
    folds. Exact for tables with at most one column rich may shrink (a label or a note): with
    two, rich can take one below its minimum and widen it again, cropping the line.
    """
    saved, table.min_width = table.min_width, None  # a title's width is no column's minimum
    try:
        # Measured without a limit: rich caps a measurement at the width it is given.
        narrowest = console.measure(table, options=console.options.update_width(_UNLIMITED)).minimum
    finally:
        table.min_width = saved
    return narrowest <= console.width


def fit(console: Console, build: Build[T], groups: Sequence[T]) -> list[Table]:
    """Tables of consecutive ``groups`` of columns, as many per table as fit the console.

    ``build(chunk, compact, sample)`` makes the table of a chunk: with compact headers or full
    ones, and (sample) with only the rows that set its narrowest width, enough to measure it.
    Compact headers are tried before a group goes on to the next table; a lone group that does
    not fit gets a table of its own.
    """
    return [build(chunk, compact, False) for chunk, compact in _chunks(console, build, groups)]


def _chunks(console: Console, build: Build[T], groups: Sequence[T]) -> list[tuple[list[T], bool]]:
    whole = _compact(console, build, groups)
    if whole is not None:  # the usual case, at the cost of one or two measurements
        return [(list(groups), whole)]
    out: list[tuple[list[T], bool]] = []
    chunk: list[T] = []
    compact = True
    for group in groups:
        choice = _compact(console, build, [*chunk, group])
        if choice is None and chunk:
            out.append((chunk, compact))
            chunk = []
            choice = _compact(console, build, [group])
        chunk.append(group)
        compact = True if choice is None else choice
    return [*out, (chunk, compact)]


def _compact(console: Console, build: Build[T], chunk: Sequence[T]) -> bool | None:
    """False when the chunk fits with full headers, True when only with compact ones, None when
    it does not fit at all."""
    for compact in (False, True):
        if fits(console, build(chunk, compact, True)):
            return compact
    return None
