"""The docs that come from the code (cog blocks in docs/*.md: every --help,
the server's options and environment) must match it: change a help text and
this fails until `make docs` is run."""

from __future__ import annotations

import subprocess
import sys

from helpers.run import ROOT

from mlbackend import cli

GENERATED = ["docs/cli.md", "docs/server.md"]


def test_generated_docs_are_current():
    p = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", "-I", "docs", *GENERATED],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, f"stale docs: run `make docs`\n{p.stdout}{p.stderr}"


def test_a_changed_help_text_makes_the_docs_stale(tmp_path):
    """The check above can fail: a copy of docs/cli.md with one help line
    changed is reported stale."""
    text = (ROOT / "docs" / "cli.md").read_text()
    needle = "name of the model (Moodle's unique id)"
    assert needle in text
    stale = tmp_path / "cli.md"
    stale.write_text(text.replace(needle, "name of the model"))
    p = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", "-I", str(ROOT / "docs"), str(stale)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0


def test_readme_points_at_every_reference_page():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README does not link docs/{page.name}"


def test_help_texts_show_no_escaped_percent_signs():
    """argparse %-formats argument help but prints descriptions as written:
    a '%%' there reaches the reader (and the man page) as it is."""
    parser = cli.build_parser()
    for name, sub in parser.commands.items():
        assert "%%" not in sub.format_help(), name
