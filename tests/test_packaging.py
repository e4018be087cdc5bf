"""Packaging: every package folder of the four stages is listed in pyproject's `[tool.setuptools] packages`."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("common", "data", "precompute", "train")


def package_folders(root: Path) -> set[str]:
    """`cdeit.<dotted path>` of every folder holding an `__init__.py` under the stage folders of `root`."""
    found = set()
    for stage in STAGES:
        for init in (root / stage).rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            if "__pycache__" not in rel.parts:
                found.add(".".join(("cdeit", *rel.parts)))
    return found


def test_every_package_folder_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    missing = sorted(package_folders(ROOT) - listed)
    assert not missing, f"add {', '.join(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert {f"cdeit.{s}" for s in STAGES} <= listed
    assert set(config["package-dir"]) == {f"cdeit.{s}" for s in STAGES}  # subpackages follow their stage folder


def test_nested_packages_are_found(tmp_path: Path) -> None:
    """A subpackage (say common/cache/) is found, a plain folder or a __pycache__ is not."""
    for folder in ("common", "common/cache", "train", "train/__pycache__"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "data" / "fixtures").mkdir(parents=True)
    assert package_folders(tmp_path) == {"cdeit.common", "cdeit.common.cache", "cdeit.train"}


def cdeit_imports(path: Path) -> set[str]:
    """The cdeit stages a module imports (`cdeit.train.models` -> 'train'), wherever the import statement is."""
    import ast

    stages = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        stages |= {n.split(".")[1] for n in names if n.startswith("cdeit.")}
    return stages


@pytest.mark.parametrize("stage", STAGES)
def test_the_dependency_rule(stage: str) -> None:
    """A stage imports common and itself, never another stage; common imports no stage (docs/architecture.md)."""
    allowed = {"common", stage}
    broken = {
        f"{path.relative_to(ROOT)} imports cdeit.{other}"
        for path in sorted((ROOT / stage).rglob("*.py"))
        for other in cdeit_imports(path) - allowed
    }
    assert not broken, "; ".join(sorted(broken))


def test_the_import_scan(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import cdeit.train.models\nfrom cdeit.data import prepare\n")
    module.write_text(module.read_text() + "def f():\n    from cdeit.common.x import y\n")  # inside a function too
    assert cdeit_imports(module) == {"train", "data", "common"}
