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
    """The cdeit stages a module imports (`cdeit.train.core.models` -> 'train'), wherever the import statement is."""
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
    module.write_text("import cdeit.train.core.models\nfrom cdeit.data import prepare\n")
    module.write_text(module.read_text() + "def f():\n    from cdeit.common.x import y\n")  # inside a function too
    assert cdeit_imports(module) == {"train", "data", "common"}


# ------------------------------------------------------------------------------------------ import circles
def module_name(path: Path, root: Path = ROOT) -> str:
    """`train/core/models.py` -> `cdeit.train.core.models`; a package's `__init__.py` is the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(("cdeit", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the cdeit modules it imports (top-level or inside a function, `from pkg import module` resolved to
    the module when it is one), over every product module under the stage folders of `root`."""
    import ast

    modules = {
        module_name(p, root): p for s in STAGES for p in (root / s).rglob("*.py") if "__pycache__" not in p.parts
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}  # fmt: skip
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    """No module imports itself back through others, not even inside a function (docs/architecture.md)."""
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_train_layers() -> None:
    """train/core imports neither use/ nor studies/; use/ does not import studies/."""
    below = {"core": ("cdeit.train.use", "cdeit.train.studies", "cdeit.train.cli"),
             "use": ("cdeit.train.studies", "cdeit.train.cli"), "studies": ("cdeit.train.cli",)}  # fmt: skip
    graph = import_graph()
    broken = sorted(
        f"{m} imports {e}"
        for m, edges in graph.items()
        for layer, banned in below.items()
        if m.startswith(f"cdeit.train.{layer}.")
        for e in edges
        if e.startswith(banned)
    )
    assert not broken, "; ".join(broken)


def test_the_circle_finder(tmp_path: Path) -> None:
    """A two-module circle through a function-level import is found; a chain is not a circle."""
    (tmp_path / "train").mkdir()
    for stage in STAGES:
        (tmp_path / stage).mkdir(exist_ok=True)
    (tmp_path / "train" / "a.py").write_text("from cdeit.train import b\n")
    (tmp_path / "train" / "b.py").write_text("def f():\n    from cdeit.train.a import x\n")
    (tmp_path / "train" / "c.py").write_text("import cdeit.train.a\n")
    assert cycles(import_graph(tmp_path)) == [["cdeit.train.a", "cdeit.train.b"]]


def test_no_product_module_over_400_lines() -> None:
    """Modules short enough to read at once (issue 21: none over 400 lines)."""
    long = sorted(
        f"{p.relative_to(ROOT)} ({n} lines)"
        for s in STAGES
        for p in (ROOT / s).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    )
    assert not long, "; ".join(long)
