"""The configuration reference, generated from the config dataclasses so that it cannot drift from them.

Every section of `Config` (`model`, `data`, `train`, ...) becomes a table of its fields: the dotted name used by
YAML, `--set` and the Parquet columns, the type annotation as written in `ctkd_tune/config.py`, the default, and
the field's docstring (the string literal that follows the field). `tests/test_docs.py` checks that
`docs/configuration.md` is exactly this output and that no field lacks a docstring. Regenerate it with

    python -m ctkd_tune.config_reference > docs/configuration.md
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass

from ctkd_tune import config

COMMAND = "python -m ctkd_tune.config_reference > docs/configuration.md"


@dataclass(frozen=True)
class FieldDoc:
    """One config field as the reference shows it."""

    name: str  # dotted: "temperature.tau_min"
    annotation: str  # as written in the source: "float", "str | None", "Literal['ctkd', ...]"
    default: object
    doc: str | None  # the docstring after the field, whitespace collapsed; None when there is none


def field_docstrings(cls: type) -> dict[str, tuple[str, str | None]]:
    """Field name → (annotation source, docstring) for a dataclass, read from its source with `ast`.

    A field's docstring is the string expression statement right after its annotated assignment, the convention
    `ctkd_tune/config.py` follows (and Sphinx's autodoc reads).
    """
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0].body
    found: dict[str, tuple[str, str | None]] = {}
    for node, after in zip(body, body[1:] + [None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        doc = None
        if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            doc = " ".join(inspect.cleandoc(after.value.value).split())
        annotation = " ".join(ast.get_source_segment(source, node.annotation).split())  # one line, even if wrapped
        found[node.target.id] = (annotation, doc)
    return found


def sections() -> list[tuple[str, type]]:
    """(section name, dataclass) for every section of `Config`, in declaration order."""
    return [(f.name, f.default_factory) for f in dataclasses.fields(config.Config)]


def fields() -> list[FieldDoc]:
    """Every field of every section, in declaration order."""
    out = []
    for section, cls in sections():
        docs = field_docstrings(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            annotation, doc = docs.get(f.name, (str(f.type), None))
            out.append(FieldDoc(f"{section}.{f.name}", annotation, getattr(defaults, f.name), doc))
    return out


def missing_docstrings() -> list[str]:
    """Dotted names of the fields that have no docstring (should be none)."""
    return [f.name for f in fields() if not f.doc]


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a `|` would end the cell, even inside backticks."""
    return text.replace("|", "\\|")


def _default(value: object) -> str:
    return "`" + _cell(repr(value)) + "`"


def render() -> str:
    """The whole reference, as Markdown."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from ctkd_tune/config.py by `{COMMAND}`; do not edit by hand. -->",
        "",
        "One `Config` describes one distillation run. Its sections are nested dataclasses in `ctkd_tune/config.py`; "
        "YAML files and `--set` use the dotted names below, which are also the Parquet column names "
        "(`ctkd-tune config --preset tiny` prints a resolved config). Every check raises an error naming the "
        "field before any model is loaded.",
        "",
    ]
    by_section: dict[str, list[FieldDoc]] = {}
    for f in fields():
        by_section.setdefault(f.name.partition(".")[0], []).append(f)
    for section, cls in sections():
        lines += [f"## `{section}`", "", " ".join(inspect.cleandoc(cls.__doc__ or "").split()), "",
                  "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for f in by_section[section]:
            lines.append(f"| `{f.name}` | `{_cell(f.annotation)}` | {_default(f.default)} | {_cell(f.doc or '')} |")
        lines.append("")
    lines += ["## Presets", "",
              "`--preset NAME` applies these overrides to the defaults (in the dotted keys of `--set`):", ""]
    for name, overrides in config.PRESETS.items():
        shown = ", ".join(f"`{key}={value!r}`" for key, value in overrides.items()) or "the defaults"
        lines.append(f"- `{name}`: {shown}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
