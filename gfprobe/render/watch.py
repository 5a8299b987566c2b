"""Rendering of ``gfprobe watch``: one screen of a run's or a study's state (``analysis.live``).

Every line is one line of the terminal: cut with "…" where it is too long, never wrapped, so the
screen's height is known. Lists that do not fit the height end in "… N more"; a layer name too
long for its column loses its middle, which keeps both its module path and its last part. Text
from files (paths, layer, stream and metric names, attributes, messages) is made printable
first (``safe``) and handed to rich as Text: shown, never obeyed, never read as markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size
from rich.console import Group
from rich.text import Text

from gfprobe.analysis.live import LayerTrace, MetricState, RunState, StudyState, View, Waiting
from gfprobe.analysis.scsdc import Comparison, Side
from gfprobe.render.check import STYLES as CHECK_STYLES
from gfprobe.render.check import SYMBOLS as CHECK_SYMBOLS
from gfprobe.render.formats import fmt, sparkline
from gfprobe.render.report import percent
from gfprobe.render.safe import printable
from gfprobe.render.scsdc import varying_keys

STATUS_STYLES = {"running": "cyan", "complete": "green", "failed": "bold red", "interrupted": "yellow",
                 "unreadable": "bold red"}
STATUS_ORDER = ("running", "complete", "failed", "interrupted")  # then any other, then unreadable
NUMBER = 9  # cells of a number as fmt writes a norm (1.234e-05)
TREND = 16  # bars of a sparkline where there is room (the report's)
NAME = 20  # cells a layer name keeps before the sparklines give way
SEP = "  ·  "


def screen(view: View, width: int, height: int | None, footer: str = "") -> Group:
    """The screen of ``view`` for a terminal ``width`` cells wide and ``height`` lines high (None:
    no limit, every row shown)."""
    if isinstance(view, RunState):
        lines = _run(view, width, height, footer)
    elif isinstance(view, StudyState):
        lines = _study(view, width, height, footer)
    else:
        lines = _waiting(view, width, footer)
    return Group(*lines)


# -- lines and blocks --------------------------------------------------------------------------

def _line(*parts: str | tuple[str, str], style: str = "") -> Text:
    """One terminal line; strings must be printable already."""
    line = Text.assemble(*parts, style=style, no_wrap=True, overflow="ellipsis")
    line.end = "\n"
    return line


def _blank() -> Text:
    return _line("")


def squeeze(value: str, width: int) -> str:
    """``value`` in at most ``width`` cells: its middle gives way to "…" where it is longer."""
    if cell_len(value) <= width:
        return value
    if width <= 1:
        return "…" if width == 1 else ""
    head = width // 2
    tail, cells = "", 0
    for char in reversed(value):
        if cells + cell_len(char) > width - 1 - head:
            break
        tail, cells = char + tail, cells + cell_len(char)
    return set_cell_size(value, width - 1 - cells) + "…" + tail


def _cell(value: str, width: int, right: bool = False) -> str:
    value = squeeze(value, width)
    pad = " " * (width - cell_len(value))
    return pad + value if right else value + pad


Cell = tuple[str, str]  # printable text, style


def _table(rows: Sequence[Sequence[Cell]], width: int, flex: int, left: Sequence[int] = ()) -> list[Text]:
    """Rows of aligned columns, one line each: every column as wide as its widest cell, but column
    ``flex`` (a name), which takes the width left (its cells squeezed). Columns in ``left`` are
    aligned left, the others right."""
    if not rows:
        return []
    widths = [max(cell_len(row[i][0]) for row in rows) for i in range(len(rows[0]))]
    others = sum(w for i, w in enumerate(widths) if i != flex) + len(widths) - 1
    widths[flex] = min(widths[flex], max(width - others, 8))
    lines = []
    for row in rows:
        parts: list[str | tuple[str, str]] = []
        for i, ((value, style), cells) in enumerate(zip(row, widths, strict=True)):
            parts += [" " if i else "", (_cell(value, cells, right=i not in left and i != flex), style)]
        lines.append(_line(*parts))
    return lines


@dataclass
class _Block:
    """Lines under a heading: ``floor`` rows are given before any block gets more, in priority order."""

    heading: list[Text]
    rows: list[Text]
    what: str  # "layers", for "… 3 more layers"
    floor: int = 3
    shown: int = 0

    def lines(self) -> list[Text]:
        rows = self.rows
        if self.shown < len(rows):
            hidden = len(rows) - self.shown + 1 if self.shown else len(rows)
            more = _line(f"… {hidden} more {self.what}", style="dim")
            rows = [*rows[: max(self.shown - 1, 0)], more]
        return [*self.heading, *rows]


def _fit(blocks: Sequence[_Block], priority: Sequence[_Block], room: int | None) -> list[Text]:
    """The blocks' lines, a blank line before each, in ``room`` lines (None: all)."""
    if room is None:
        for block in blocks:
            block.shown = len(block.rows)
    else:
        left = room - sum(1 + len(block.heading) for block in blocks if block.rows or block.heading)
        for pass_floor in (True, False):
            for block in priority:
                want = min(len(block.rows), block.floor) if pass_floor else len(block.rows)
                extra = max(min(want - block.shown, left), 0)
                block.shown += extra
                left -= extra
        for block in blocks:  # a block with rows it could not show at least says how many
            if block.rows and not block.shown:
                block.shown = 1
    out: list[Text] = []
    for block in blocks:
        if block.rows or block.heading:
            out += [_blank(), *block.lines()]
    return out


def _footer(footer: str) -> list[Text]:
    return [_blank(), _line(footer, style="dim")] if footer else []


def _status(status: str) -> tuple[str, str]:
    return printable(status), STATUS_STYLES.get(status, "bold")


# -- a run --------------------------------------------------------------------------------------

def _run(state: RunState, width: int, height: int | None, footer: str) -> list[Text]:
    head = [_title(state, width), _pace(state), _measures(state), _stream(state)]
    layers = _Block([_layer_heading(width)], [_layer_row(layer, width) for layer in state.layers], "layers")
    metrics = _Block([_line(("metric", "bold"))], _metric_rows(state.metrics, width), "metrics", floor=2)
    alerts = _Block([], _alerts(state, width, height), "lines of failing rules", floor=2 * len(state.findings))
    if not state.layers:
        layers = _Block([_line("no weight layer recorded yet" if not state.records else "no weight layers",
                               style="dim")], [], "layers")
    blocks = [layers, metrics, alerts] if state.metrics else [layers, alerts]
    tail = _footer(footer)
    room = None if height is None else height - len(head) - len(tail)
    return [*head, *_fit(blocks, [alerts, layers, metrics], room), *tail]


def _title(state: RunState, width: int) -> Text:
    """The path (its middle gives way first), the status, the exit code, and a failed run's error."""
    status = _status(state.status)
    code = f" (exit code {state.exit_code})" if state.exit_code is not None else ""
    gone = " · writer gone (killed?)" if state.writer_gone else ""
    path = squeeze(printable(state.path), max(width - 2 - cell_len(status[0] + code + gone), 12))
    parts: list[str | tuple[str, str]] = [(path, "bold"), "  ", status, code, (gone, STATUS_STYLES["failed"])]
    if state.error:
        parts.append(f": {printable(state.error)}")
    return _line(*parts)


def _pace(state: RunState) -> Text:
    if state.last_step is None:
        return _line("no optimizer step recorded yet", style="dim")
    skipped = f", {state.skipped} AMP-skipped" if state.skipped else ""
    words = [f"step {state.last_step}", f"{state.records} recorded{skipped}"]
    if math.isfinite(state.rate):
        words.append(f"{state.rate:.3g} steps/s")
    if state.age is not None:
        words.append(f"last step {state.age:.0f} s ago")
    return _line(SEP.join(words))


def _measures(state: RunState) -> Text:
    parts: list[str | tuple[str, str]] = []
    for name, value in state.measures.items():
        parts += ["   " if parts else "", (name, "bold"), f" {fmt(value)}"]
    return _line(*parts)


def _stream(state: RunState) -> Text:
    streams = f" (stream of {state.streams})" if state.streams > 1 else ""
    cost = (f"gfprobe's own time {percent(state.cost.fraction)} of the step time" if state.cost is not None
            else "gfprobe's own time not measured" + (" yet" if state.records < 2 and not state.finished else ""))
    return _line(f"{printable(state.stream) or 'stream'}{streams}: {len(state.layers)} weight layers", SEP, cost)


def _layer_widths(width: int) -> tuple[int, int]:
    """(name, sparkline) cells of a layer row ``width`` cells wide."""
    fixed = 2 * NUMBER + 4  # the two numbers and the four spaces between the five columns
    trend = max(min(TREND, (width - fixed - NAME) // 2), 4)
    return max(width - fixed - 2 * trend, 8), trend


def _layer_heading(width: int) -> Text:
    name, trend = _layer_widths(width)
    return _line((" ".join([_cell("weight layer", name), _cell("‖g‖₂", trend), _cell("last", NUMBER, True),
                            _cell("‖g⊙m‖₂", trend), _cell("last", NUMBER, True)]), "bold"))


def _layer_row(layer: LayerTrace, width: int) -> Text:
    name, trend = _layer_widths(width)
    cells = [_cell(printable(layer.name), name), _cell(sparkline(layer.raw_l2, trend), trend),
             _cell(fmt(layer.last_raw), NUMBER, True), _cell(sparkline(layer.masked_l2, trend), trend),
             _cell(fmt(layer.last_masked), NUMBER, True)]
    return _line(" ".join(cells), style="red" if layer.nonfinite else "")


def _metric_rows(metrics: Sequence[MetricState], width: int) -> list[Text]:
    """Name, last value and its step, in aligned columns."""
    cells = [(printable(m.name), fmt(m.last), f"at step {m.step}") for m in metrics]
    value = max((cell_len(c[1]) for c in cells), default=0)
    at = max((cell_len(c[2]) for c in cells), default=0)
    name = min(max((cell_len(c[0]) for c in cells), default=0), max(width - value - at - 2, 8))
    return [_line(_cell(n, name), " ", (_cell(v, value, True), "bold"), " ", a) for n, v, a in cells]


def _alerts(state: RunState, width: int, height: int | None) -> list[Text]:
    """The failing rules, each in two lines at most (all of it where the height is not limited)."""
    if not state.records:
        return [_line("check: nothing to check yet", style="dim")]
    alerts = state.alerts
    if not alerts:
        passed = sum(f.status == "pass" for f in state.findings)
        skipped = sum(f.status == "skip" for f in state.findings)
        return [_line(("check: ", "green"), f"no rule fails so far ({passed} pass, {skipped} skip)")]
    lines = []
    for finding in alerts:
        label = f"{CHECK_SYMBOLS['fail']} {printable(finding.rule)}: "
        message = printable(finding.message)
        if height is None:
            line = Text.assemble((label, CHECK_STYLES["fail"]), message)
            line.end = "\n"
            lines.append(line)
            continue
        first, rest = _split(message, width - cell_len(label))
        lines.append(_line((label, CHECK_STYLES["fail"]), first))
        if rest:
            lines.append(_line("    " + rest))
    return lines


def _split(text: str, width: int) -> tuple[str, str]:
    """``text`` as a first line of at most ``width`` cells, broken at a space where there is one,
    and the rest."""
    if cell_len(text) <= width:
        return text, ""
    cut = set_cell_size(text, max(width, 1)).rstrip()
    space = cut.rfind(" ")
    if space > width // 2:
        cut = cut[:space]
    return cut, text[len(cut):].lstrip()


# -- a study ------------------------------------------------------------------------------------

def _study(state: StudyState, width: int, height: int | None, footer: str) -> list[Text]:
    total = len(state.runs) + len(state.unreadable)
    files = f"  ·  {total} run files"
    head = [_line((squeeze(printable(state.path), max(width - len(files), 12)), "bold"), files), _counts(state)]
    unfinished = _unfinished(state, width)
    others = _Block([_line(("runs not complete", "bold"))], unfinished, "runs")
    if not unfinished:
        done = "every run is complete" if state.runs else "no run file yet"
        others = _Block([_line(done, style="dim")], [], "runs")
    order = "lowest first" if state.lower_is_better else "highest first"
    best = _Block([_line((f"best by {printable(state.metric)}", "bold"), f" ({order})")], _best(state, width), "runs")
    if not state.best:
        best = _Block([_line(f"no run has {printable(state.metric)} yet", style="dim")], [], "runs")
    pair_rows = _pair_rows(state.pairs, width)
    pairs = _Block([_pairs_heading(state), *pair_rows[:1]], pair_rows[1:], "configurations")
    tail = _footer(footer)
    room = None if height is None else height - len(head) - len(tail)
    return [*head, *_fit([others, best, pairs], [pairs, best, others], room), *tail]


def _counts(state: StudyState) -> Text:
    order = [*STATUS_ORDER, *sorted(set(state.counts) - {*STATUS_ORDER, "unreadable"}), "unreadable"]
    parts: list[str | tuple[str, str]] = []
    for status in order:
        if status in state.counts or status in ("running", "complete"):
            if parts:
                parts.append(SEP)
            parts += [_status(status), f" {state.counts.get(status, 0)}"]
    return _line(*parts)


def _unfinished(state: StudyState, width: int) -> list[Text]:
    """Every run but the complete ones, running first, then those that ended early; then the
    files that cannot be read, with why."""
    rank = {status: i for i, status in enumerate(STATUS_ORDER)}
    runs = sorted((r for r in state.runs if r.status != "complete"), key=lambda r: (rank.get(r.status, 9), r.name))
    rows = [[(printable(r.name), ""), _status(r.status), (f"{r.steps} steps", "")] for r in runs]
    lines = _table(rows, width, flex=0, left=(1,))
    for item in state.unreadable:
        lines.append(_line(("unreadable ", STATUS_STYLES["unreadable"]), printable(item)))
    return lines


def _best(state: StudyState, width: int) -> list[Text]:
    rows = [[(f"{i}.", ""), (printable(run.name), ""), (fmt(run.value), "bold"), (f"egf_2 {fmt(run.egf_2)}", ""),
             _status(run.status)] for i, run in enumerate(state.best, start=1)]
    return _table(rows, width, flex=1, left=(4,))


def _pairs_heading(state: StudyState) -> Text:
    if not state.pairs:
        return _line(("SC-SDC: ", "bold"), printable(state.note), style="dim")
    return _line(("SC-SDC", "bold"), f": {len(state.pairs)} of {state.configurations} configurations complete on "
                 f"both sides ({printable(state.metric)})")


def _side(side: Side | None) -> str:
    if side is None or not side.n:
        return "–"
    return f"{side.acc_mean:.3f} ({side.n})"


def _pair_rows(pairs: Sequence[Comparison], width: int) -> list[Text]:
    """A header line, then one line per configuration: sparse and dense means (runs), their
    difference, and the one-sided p-value once each side has two runs."""
    if not pairs:
        return []
    keys, _ = varying_keys(pairs)
    rows = [[("configuration", "bold"), ("sparse", "bold"), ("dense", "bold"), ("diff", "bold"), ("p", "bold")]]
    for c in pairs:
        label = " ".join(f"{k}={fmt(c.config.get(k))}" for k in keys) or "all runs"
        rows.append([(printable(label), ""), (_side(c.sparse), ""), (_side(c.dense), ""),
                     (f"{c.diff:+.3f}" if math.isfinite(c.diff) else "–", ""),
                     (f"{c.p:.3f}" if math.isfinite(c.p) else "–", "")])
    return _table(rows, width, flex=0, left=(0,))


# -- waiting ------------------------------------------------------------------------------------

def _waiting(view: Waiting, width: int, footer: str) -> list[Text]:
    return [_line((squeeze(printable(view.path), width - len("  waiting")), "bold"), "  ", ("waiting", "cyan")),
            _line(printable(view.reason), style="dim"), *_footer(footer)]
