"""Rendering of ``gfprobe check``: a rich table, JSON, GitHub workflow annotations, JUnit XML.

Paths and messages (which name layers) come from run files: each format gets them printable,
then escaped by its own rules, so a file name cannot add a workflow command or break the XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from gfprobe.analysis.check import Finding, RunCheck
from gfprobe.errors import ConfigError
from gfprobe.render.formats import to_json
from gfprobe.render.safe import printable, text, visible
from gfprobe.store.reader import Unreadable

STYLES = {"pass": "green", "fail": "bold red", "skip": "dim"}
SYMBOLS = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}


def render_table(console: Console, checks: Sequence[RunCheck]) -> None:
    for check in checks:
        verdict = "all rules pass" if check.passed else f"{sum(f.status == 'fail' for f in check.findings)} rules fail"
        table = Table(title=text(f"{check.path}: {verdict}", "table.title"), title_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        table.add_column("rule", no_wrap=True)
        table.add_column("result", no_wrap=True)
        table.add_column("detail", overflow="fold")
        for finding in check.findings:
            table.add_row(text(finding.rule), text(SYMBOLS[finding.status], STYLES[finding.status]),
                          text(finding.message))
        console.print(table)


def render_json(checks: Sequence[RunCheck], unreadable: Sequence[Unreadable] = ()) -> str:
    """The results, and the files that were never checked: no run passed that could not be read."""
    payload: dict[str, Any] = {
        "passed": all(c.passed for c in checks) and not unreadable,
        "runs": [{"path": c.path, "passed": c.passed, "results": [_finding_json(f) for f in c.findings]}
                 for c in checks]}
    if unreadable:
        payload["unreadable"] = [item.to_json() for item in unreadable]
    return to_json(payload)


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {"rule": finding.rule, "status": finding.status, "message": finding.message, "layer": finding.layer,
            "step": finding.step, "value": finding.value, "limit": finding.limit}


def _escape(value: str) -> str:
    """GitHub's workflow-command escaping of a message (after making it visible)."""
    return visible(value).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(value: str) -> str:
    """GitHub's escaping of a property value (file=, title=): a message's, and ':' and ','."""
    return _escape(value).replace(":", "%3A").replace(",", "%2C")


def render_github(checks: Sequence[RunCheck], command: str = "check",
                  passed: str = "all gradient-health rules pass") -> str:
    """One ``::error`` annotation per failing rule, one ``::notice`` per run that passes
    (``command``: the gfprobe command the titles name, ``check`` or ``diff``)."""
    lines = []
    for check in checks:
        failures = [f for f in check.findings if f.status == "fail"]
        lines += [annotation("error", check.path, f"gfprobe {command} {f.rule}", f.message) for f in failures]
        if not failures:
            lines.append(annotation("notice", check.path, f"gfprobe {command}", passed))
    return "\n".join(lines) + "\n"


def annotation(level: str, path: str, title: str, message: str) -> str:
    """One workflow command (``::error``, ``::notice``) about ``path``, escaped by GitHub's rules."""
    return f"::{level} file={_property(path)},title={_property(title)}::{_escape(message)}"


def write_junit(checks: Sequence[RunCheck], path: Path, command: str = "check") -> None:
    """A JUnit XML report: a test suite per run, a test case per rule. Text is made printable:
    ElementTree writes control characters as they are, which XML 1.0 does not allow."""
    suites = ET.Element("testsuites", name=f"gfprobe {command}", tests=str(sum(len(c.findings) for c in checks)),
                        failures=str(sum(f.status == "fail" for c in checks for f in c.findings)))
    for check in checks:
        suite = ET.SubElement(suites, "testsuite", name=printable(check.path), tests=str(len(check.findings)),
                              failures=str(sum(f.status == "fail" for f in check.findings)),
                              skipped=str(sum(f.status == "skip" for f in check.findings)))
        for finding in check.findings:
            rule, message = printable(finding.rule), printable(finding.message)
            case = ET.SubElement(suite, "testcase", classname=f"gfprobe.{command}", name=rule)
            if finding.status == "fail":
                failure = ET.SubElement(case, "failure", message=message, type=rule)
                failure.text = message
            elif finding.status == "skip":
                ET.SubElement(case, "skipped", message=message)
            else:
                output = ET.SubElement(case, "system-out")
                output.text = message
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as exc:  # checked before the runs were read; this is the rare change since then
        raise ConfigError(f"--junit {path}: cannot write it ({exc.strerror or exc}); "
                          "choose a path you can write to") from None
