"""The configuration reference as a Markdown table, read from the dataclasses' field docstrings.

docs/configuration.md embeds this table and a test checks it is current, so the docs cannot go stale:
``python -m textlora.config_doc`` prints it, ``python -m textlora.config_doc --write`` rewrites it there.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

from . import config as config_module
from .config import RunConfig

def _field_docs(cls) -> dict[str, str]:
    """``{field: docstring}`` from the string literal that follows each annotated field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                and isinstance(getattr(following, "value", None), ast.Constant):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def _default(field) -> str:
    if field.default is not MISSING:
        value = field.default
    elif field.default_factory is not MISSING:
        value = field.default_factory()
    else:
        return ""
    return "null" if value is None else repr(value).replace("'", "")


def reference_rows(cls=RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    rows = []
    docs = _field_docs(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        nested = getattr(config_module, kind, None) if isinstance(kind, str) else None
        if is_dataclass(nested):  # a section (model, data.train, ...): its keys, not a row of its own
            rows.extend(reference_rows(nested, key + "."))
            continue
        inner = kind.replace("Optional[", "").rstrip("]") if kind.startswith("Optional[") else ""
        source = getattr(config_module, inner, None)
        if is_dataclass(source):
            rows.append((key, "null", docs.get(f.name, "") + " Same keys as `data.train`."))
            continue
        rows.append((key, _default(f), docs.get(f.name, "")))
    return rows


def reference_markdown() -> str:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, doc in reference_rows():
        doc = doc.replace("``", "`").replace("|", "/")
        lines.append(f"| `{key}` | `{default}` | {doc} |")
    return "\n".join(lines)


DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"  # in a source checkout
MARKERS = re.compile(r"(<!-- config-reference:start[^>]*-->\n)(.*?)(\n<!-- config-reference:end -->)", re.S)


def write_reference(path: Path = DOC) -> None:
    """Replace the table between the config-reference markers of ``path`` with :func:`reference_markdown`."""
    text = path.read_text()
    if not MARKERS.search(text):
        raise SystemExit(f"error: {path} has no config-reference markers")
    path.write_text(MARKERS.sub(lambda m: m.group(1) + reference_markdown() + m.group(3), text, count=1))
    print(f"wrote the configuration reference in {path}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:
        write_reference()
    else:
        print(reference_markdown())
