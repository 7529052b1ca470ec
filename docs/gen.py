"""What cog writes into docs/*.md from the code, so the docs cannot drift.

`make docs` rewrites the generated blocks; `make lint` and the tests
(tests/test_docs.py) fail when they are stale.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlbackend.cli import Parser

os.environ["COLUMNS"] = "90"  # argparse wraps to the terminal: fix the width


def _parser() -> Parser:
    from mlbackend.cli import build_parser

    return build_parser()


def _subparsers(parser: Parser) -> dict[str, Parser]:
    return parser.commands


def help_text(command: str | None = None) -> str:
    """`mlbackend [COMMAND] --help`, as a fenced block."""
    parser = _parser()
    text = (_subparsers(parser)[command] if command else parser).format_help()
    return f"```\n$ mlbackend {command + ' ' if command else ''}--help\n{text.rstrip()}\n```"


def all_help() -> str:
    """The program's help, then each subcommand's."""
    parts = [help_text()]
    for name in _subparsers(_parser()):
        parts += [f"## mlbackend {name}", help_text(name)]
    return "\n\n".join(parts)


def options_table(command: str) -> str:
    """A subcommand's options as a Markdown table: option, default, meaning."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for action in _subparsers(_parser())[command].options():
        if not action.option_strings:
            continue
        name = ", ".join(f"`{o}`" for o in action.option_strings)
        if action.metavar:
            name += f" {action.metavar}"
        meaning, _, said = (action.help or "").replace("%%", "%").partition("; default: ")
        default = said if action.default in (None, False) else f"`{action.default}`"
        rows.append(f"| {name} | {default} | {meaning} |")
    return "\n".join(rows)


def environment_table() -> str:
    """The server's environment variables (mlbackend.server.config.ENVIRONMENT)."""
    from mlbackend.server.config import ENVIRONMENT

    rows = ["| variable | meaning |", "|---|---|"]
    for name, meaning in ENVIRONMENT:
        names = [n.strip() for n in name.split(",")]
        rows.append(f"| {', '.join(n if n == '...' else f'`{n}`' for n in names)} | {meaning} |")
    return "\n".join(rows)
