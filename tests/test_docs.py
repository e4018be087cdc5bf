"""Every `from cdeit... import ...` and `import cdeit...` line in the code blocks of README.md and docs/*.md
imports: a renamed module or function fails here instead of in a reader's terminal."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
IMPORT = re.compile(r"^\s*(from\s+cdeit[\w.]*\s+import\s+.+|import\s+.*\bcdeit\b.*)$")


def doc_imports(text: str) -> list[str]:
    """The import statements that name cdeit in the fenced code blocks of one Markdown text."""
    statements = []
    for block in FENCE.findall(text):
        rows = iter(line.split("#", 1)[0].rstrip() for line in block.splitlines())
        for line in rows:
            if not IMPORT.match(line):
                continue
            while line.count("(") > line.count(")") or line.endswith("\\"):  # a statement over several lines
                line = line.rstrip("\\") + " " + next(rows, ")").strip()
            statements.append(line.strip())
    return statements


def imported_names(statement: str) -> list[tuple[str, str | None]]:
    """(module, name) pairs a statement imports; name None for `import module`. Only cdeit modules."""
    node = ast.parse(statement).body[0]
    if isinstance(node, ast.ImportFrom):
        return [(node.module or "", alias.name) for alias in node.names]
    assert isinstance(node, ast.Import)
    return [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "cdeit"]


def all_doc_imports() -> list[tuple[str, str, str | None]]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return sorted(
        {
            (f.relative_to(ROOT).as_posix(), mod, name)
            for f in files
            for s in doc_imports(f.read_text())
            for mod, name in imported_names(s)
        }  # fmt: skip
    )


def test_the_docs_show_imports() -> None:
    assert len(all_doc_imports()) >= 5  # the extraction works: the README and docs/students.md show several


def test_extraction() -> None:
    text = "x\n```python\nimport json, timm, cdeit.train.core.models  # registers\nfrom cdeit.common.x import a, b\n"
    text += "from cdeit.common.z import (\n    c,\n    d,\n)\n```\n"
    text += "from cdeit.y import outside_a_block\n```bash\ncdeit train\n```\n"
    statements = doc_imports(text)
    assert statements[:2] == ["import json, timm, cdeit.train.core.models", "from cdeit.common.x import a, b"]
    assert imported_names(statements[2]) == [("cdeit.common.z", "c"), ("cdeit.common.z", "d")]
    assert len(statements) == 3
    assert imported_names(statements[0]) == [("cdeit.train.core.models", None)]
    assert imported_names(statements[1]) == [("cdeit.common.x", "a"), ("cdeit.common.x", "b")]


@pytest.mark.parametrize(("doc", "module", "name"), all_doc_imports())
def test_doc_import(doc: str, module: str, name: str | None) -> None:
    mod = importlib.import_module(module)
    if name is not None:
        submodule = hasattr(mod, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
        assert hasattr(mod, name) or submodule, f"{doc} imports {name} from {module}, which has no such name"
