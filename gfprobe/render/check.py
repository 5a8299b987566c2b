"""Rendering of ``gfprobe check``: a rich table, JSON, GitHub workflow annotations, JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from gfprobe.analysis.check import RunCheck
from gfprobe.render.formats import to_json

STYLES = {"pass": "green", "fail": "bold red", "skip": "dim"}
SYMBOLS = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}


def render_table(console: Console, checks: Sequence[RunCheck]) -> None:
    for check in checks:
        verdict = "all rules pass" if check.passed else f"{sum(f.status == 'fail' for f in check.findings)} rules fail"
        table = Table(title=f"{check.path}: {verdict}", title_justify="left", box=box.SIMPLE_HEAD,
                      pad_edge=False, collapse_padding=True)
        table.add_column("rule", no_wrap=True)
        table.add_column("result", no_wrap=True)
        table.add_column("detail", overflow="fold")
        for finding in check.findings:
            table.add_row(finding.rule, f"[{STYLES[finding.status]}]{SYMBOLS[finding.status]}[/]", finding.message)
        console.print(table)


def render_json(checks: Sequence[RunCheck]) -> str:
    return to_json({"passed": all(c.passed for c in checks),
                    "runs": [{"path": c.path, "passed": c.passed, "results": [f.to_json() for f in c.findings]}
                             for c in checks]})


def _escape(text: str) -> str:
    """GitHub's workflow-command escaping of a message."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def render_github(checks: Sequence[RunCheck]) -> str:
    """One ``::error`` annotation per failing rule, one ``::notice`` per run that passes."""
    lines = []
    for check in checks:
        failures = [f for f in check.findings if f.status == "fail"]
        for f in failures:
            lines.append(f"::error file={check.path},title=gfprobe check {f.rule}::{_escape(f.message)}")
        if not failures:
            lines.append(f"::notice file={check.path},title=gfprobe check::all gradient-health rules pass")
    return "\n".join(lines) + "\n"


def write_junit(checks: Sequence[RunCheck], path: Path) -> None:
    """A JUnit XML report: a test suite per run, a test case per rule."""
    suites = ET.Element("testsuites", name="gfprobe check", tests=str(sum(len(c.findings) for c in checks)),
                        failures=str(sum(f.status == "fail" for c in checks for f in c.findings)))
    for check in checks:
        suite = ET.SubElement(suites, "testsuite", name=check.path, tests=str(len(check.findings)),
                              failures=str(sum(f.status == "fail" for f in check.findings)),
                              skipped=str(sum(f.status == "skip" for f in check.findings)))
        for finding in check.findings:
            case = ET.SubElement(suite, "testcase", classname="gfprobe.check", name=finding.rule)
            if finding.status == "fail":
                failure = ET.SubElement(case, "failure", message=finding.message, type=finding.rule)
                failure.text = finding.message
            elif finding.status == "skip":
                ET.SubElement(case, "skipped", message=finding.message)
            else:
                output = ET.SubElement(case, "system-out")
                output.text = finding.message
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
