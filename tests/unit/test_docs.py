"""The docs keep up with the code: every command, option and config section of the CLI is in
docs/cli.md, README.md stays a front door (at most 160 lines), and the links inside the docs
resolve (anchors to headings, relative paths to files)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from jobs.cli_parser import build_parser
from rlhf.config.core import Config

ROOT = Path(__file__).resolve().parents[2]
CLI_DOC = ROOT / "docs" / "cli.md"
README = ROOT / "README.md"
README_MAX_LINES = 160
LINKED_DOCS = [README, CLI_DOC, ROOT / "docs" / "results.md"]


def _commands(parser: argparse.ArgumentParser, prefix: str = "rlhf") -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((f"{prefix} {name}", sub))
                out.extend(_commands(sub, f"{prefix} {name}"))
    return out


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [
        flag
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        for flag in action.option_strings
        if flag.startswith("--")
    ]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def _anchors(doc: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", _without_code(doc.read_text()), flags=re.M)}


COMMANDS = _commands(build_parser())


def test_the_parser_walk_finds_nested_commands():
    names = {name for name, _ in COMMANDS}
    assert {"rlhf sft", "rlhf serve reward", "rlhf jobs list", "rlhf cluster up"} <= names


@pytest.mark.parametrize("name", [name for name, _ in COMMANDS])
def test_every_subcommand_is_in_cli_doc(name):
    assert f"`{name}`" in CLI_DOC.read_text() or f"`{name} " in CLI_DOC.read_text(), (
        f"docs/cli.md does not mention `{name}`: run .venv/bin/python scripts/cli_reference.py --write "
        "and describe it under 'Commands'"
    )


@pytest.mark.parametrize("name,parser", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_option_is_in_cli_doc(name, parser):
    text = CLI_DOC.read_text()
    section = text.split(f"#### `{name}`\n", 1)
    assert len(section) == 2, f"docs/cli.md has no generated section for `{name}` (scripts/cli_reference.py --write)"
    body = section[1].split("\n#### ", 1)[0]
    missing = [flag for flag in _options(parser) if f"`{flag}" not in body and f", {flag}" not in body]
    assert not missing, f"`{name}` options missing from docs/cli.md: {missing}"


@pytest.mark.parametrize("section", list(Config.model_fields))
def test_every_config_section_is_in_cli_doc(section):
    assert f"#### `{section}`" in CLI_DOC.read_text(), f"config section {section!r} missing from docs/cli.md"


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    text = README.read_text()
    for command in ("scripts/demo.sh", "scripts/test.sh", "docs/cli.md", "docs/results.md"):
        assert command in text, f"README.md should point to {command}"


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=[p.name for p in LINKED_DOCS])
def test_links_resolve(doc):
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(doc.read_text())):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = doc.parent / path if path else doc
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            bad.append(target)
    assert not bad, f"{doc.name}: links that go nowhere: {bad}"
