"""The documentation cannot drift: the generated configuration reference, the README's commands table, its length
and every relative link in README.md and docs/."""

from __future__ import annotations

import re
from pathlib import Path

from ctkd_tune import config_reference
from ctkd_tune.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def subcommands() -> list[str]:
    parser = build_parser()
    choices = [action.choices for action in parser._actions if isinstance(action.choices, dict)]
    assert len(choices) == 1, "the CLI should have exactly one set of subcommands"
    return list(choices[0])


def commands_table(text: str) -> str:
    """The table rows of the README's `## Commands` section."""
    section = text.split("\n## Commands", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def test_configuration_reference_is_generated_from_the_config():
    written = (DOCS / "configuration.md").read_text()
    assert written == config_reference.render(), (
        f"docs/configuration.md is out of date with ctkd_tune/config.py; regenerate it: {config_reference.COMMAND}")


def test_every_config_field_has_a_docstring():
    assert config_reference.missing_docstrings() == []
    assert len(config_reference.fields()) > 50  # every section was read, not just the first


def test_the_reference_names_every_field_with_its_default():
    text = config_reference.render()
    for f in config_reference.fields():
        assert f"| `{f.name}` |" in text
    assert "| `temperature.tau_min` | `float` | `1.0` |" in text
    assert "`str \\| None`" in text  # a pipe inside a cell is escaped, so the table keeps its columns


def test_every_subcommand_is_in_the_readme_commands_table():
    table = commands_table(README.read_text())
    names = subcommands()
    assert {"distill", "search", "validate", "export", "report", "status"} <= set(names)
    missing = [name for name in names if not re.search(rf"`ctkd-tune {name}\b", table)]
    assert missing == [], f"README.md's commands table lacks: {', '.join(missing)}"


def test_readme_is_the_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; move detail into docs/"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()[-1]
    assert ci in lines[:6], "the README's test command must stay the one CI runs verbatim (.ci/run)"


def test_every_relative_link_points_to_a_file():
    pages = [README, *sorted(DOCS.rglob("*.md"))]
    assert len(pages) > 5
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == [], "broken relative links:\n" + "\n".join(broken)
