"""Every command, subcommand and option of the CLI has help text and is documented (sqlite-utils'
``test_docs.py``).

The rule: a command's *doc section* is a Markdown section of README.md or docs/*.md (a heading and
everything under it, up to the next heading of the same or a higher level) whose heading names the
command as ``gfprobe <command>``, e.g. ``## Figures (`gfprobe plot`)``. Every command registered on
``gfprobe.cli.main`` needs one, and each long name of each of its options (``--format``,
``--runs`` and ``--no-runs``) must appear, as a whole word, in one of its doc sections. Headings,
not prose, decide what a section is about: a passing mention of ``gfprobe report`` elsewhere does
not make a section document it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gfprobe.cli import main

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def walk(group: click.Group = main, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """Every command and subcommand registered on ``group``, as ("scsdc run", command). Only the
    registered ones: listing a plugin's commands would load plugins, which the tests never do."""
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        yield " ".join(path), command
        if isinstance(command, click.Group):
            yield from walk(command, path)


def long_options(command: click.Command) -> list[str]:
    names = [name for param in command.params if isinstance(param, click.Option)
             for name in (*param.opts, *param.secondary_opts) if name.startswith("--")]
    return [name for name in names if name != "--help"]


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, section) of every heading; a ``#`` line inside a code fence is a comment, no heading."""
    lines = text.splitlines()
    headings: list[tuple[int, int]] = []  # (line, level)
    fenced = False
    for index, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"(#{1,6}) ", line)):
            headings.append((index, len(match.group(1))))
    out = []
    for k, (start, level) in enumerate(headings):
        end = next((line for line, deeper in headings[k + 1:] if deeper <= level), len(lines))
        out.append((lines[start], "\n".join(lines[start:end])))
    return out


def doc_sections(name: str, texts: list[str]) -> list[str]:
    """The sections about command ``name``: their heading names it (``gfprobe scsdc`` is not
    ``gfprobe scsdc-x``, but a section on ``gfprobe scsdc run`` is about the group too)."""
    pattern = re.compile(rf"gfprobe {re.escape(name)}(?![\w-])")
    return [body for text in texts for heading, body in sections(text) if pattern.search(heading)]


def undocumented(name: str, command: click.Command, texts: list[str]) -> list[str]:
    """The long options of ``command`` that none of its doc sections names."""
    found = doc_sections(name, texts)
    return [option for option in long_options(command)
            if not any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", body) for body in found)]


COMMANDS = dict(walk())
TEXTS = [path.read_text(encoding="utf-8") for path in DOCS]


@pytest.mark.parametrize("name", [pytest.param("", id="gfprobe"), *COMMANDS])
def test_every_command_has_help(name: str) -> None:
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    assert len(result.output.split("\n\n", 2)[1].strip()) > 20  # a real description


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_a_doc_section(name: str) -> None:
    assert doc_sections(name, TEXTS), (f"no section of README.md or docs/*.md has a heading naming "
                                       f"`gfprobe {name}`; add one (e.g. '## `gfprobe {name}`')")


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_documented(name: str) -> None:
    missing = undocumented(name, COMMANDS[name], TEXTS)
    assert not missing, f"options of `gfprobe {name}` in none of its doc sections: {', '.join(missing)}"


def test_the_rule_sees_a_missing_option_and_a_section_about_another_command() -> None:
    @click.command()
    @click.option("--format")
    @click.option("--per-layer/--all-layers")
    def cmd() -> None:
        """A command."""

    doc = ("# `gfprobe cmd`\n\nUse `--format` and `--per-layer`.\n```\n# not a heading\n```\n--all-layers-x\n"
           "# `gfprobe other`\n`--all-layers`\n")
    assert undocumented("cmd", cmd, [doc]) == ["--all-layers"]  # the subsection is about another command
    assert undocumented("cmd", cmd, [doc.replace("# `gfprobe other`", "## More")]) == []
    assert doc_sections("cm", [doc]) == [] and undocumented("cmd", cmd, ["`gfprobe cmd --format`"]) == [
        "--format", "--per-layer", "--all-layers"]  # prose, not a heading
