"""The layout holds by construction (docs/layout.md): imports run one way, nothing reaches sys.path, and the
archive ships exactly what a worker imports (handler.py and the sentiment.serving package), importable
from the archive alone."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sentiment"
# What each part of the package may import of the package (a part always may import itself).
ALLOWED = {
    "serving": {"serving"},
    "data": {"serving"},
    "training": {"serving", "data"},
    "ops": {"serving", "data"},
}
# Folders and top-level modules of the tree that product code never imports: tools, tests and entry points.
OUTSIDE = {"bench", "scripts", "tests", "deploy", "handler", "model_def", "export", "conftest"}


def part_of(module: str) -> str:
    """sentiment.serving.text -> "serving"; sentiment.data -> "data"."""
    return module.split(".")[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every module an import statement in the file names (at any depth: lazy imports count), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, node.lineno))
            # `from sentiment.ops import rules` imports the module sentiment.ops.rules
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names
                      if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").exists()]
    return found


PRODUCT = sorted(PACKAGE.rglob("*.py"))
GRAPH = {module_name(p): {m for m, _ in imports_of(p) if m.startswith("sentiment.")} for p in PRODUCT}


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path):
    module = module_name(path)
    if module == "sentiment":
        assert not GRAPH[module], "sentiment/__init__.py imports nothing: the archive ships it alone with serving"
        return
    allowed = ALLOWED[part_of(module)] | {part_of(module)}
    for imported, line in imports_of(path):
        top = imported.split(".")[0]
        assert top not in OUTSIDE, f"{path.name}:{line} imports {imported}: product code never imports tools, tests or entry points"
        if top == "sentiment" and imported != "sentiment":
            assert part_of(imported) in allowed, f"{path.name}:{line} imports {imported}: {part_of(module)} may import {sorted(allowed)}"


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_sys_path_edits(path):
    tree = ast.parse(path.read_text())
    edits = [node.lineno for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert not edits, f"{path.name} reaches sys.path at lines {edits}"


def test_no_import_cycles():
    """Depth-first search of the package's import graph (lazy imports included): no module reaches itself."""
    def visit(module: str, trail: list[str]) -> None:
        for imported in sorted(GRAPH.get(module, ())):
            if imported in trail:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(imported):] + [imported]))
            if imported in GRAPH and imported not in done:
                visit(imported, trail + [imported])
        done.add(module)

    done: set[str] = set()
    for module in GRAPH:
        visit(module, [module])


def test_the_graph_is_read():
    """The checks above see real edges: the handler imports the payloads, promotion the TorchServe client."""
    assert "sentiment.serving.payload" in GRAPH["sentiment.serving.handler"]
    assert "sentiment.ops.torchserve" in GRAPH["sentiment.ops.promote"]
    assert "sentiment.data" in GRAPH["sentiment.training.nbsvm"]


def served_code() -> set[str]:
    return {"handler.py", "sentiment/__init__.py", *(str(p.relative_to(ROOT)) for p in (PACKAGE / "serving").glob("*.py"))}


def test_v1_archive_ships_exactly_what_the_worker_imports(export_dir):
    with zipfile.ZipFile(ROOT / "model_store" / "sentiment.mar") as mar:
        names = set(mar.namelist())
        for name in served_code():
            assert mar.read(name) == (ROOT / name).read_bytes(), f"{name} in the archive is stale"
    artifact = {"signature.json", "vocab.json", "model.pt", "model-config.yaml", "MAR-INF/MANIFEST.json"}
    assert names == served_code() | artifact


def test_handler_imports_from_the_archive_alone(export_dir, tmp_path):
    """A clean interpreter (-I: no PYTHONPATH, no working directory on sys.path) given only the extracted
    archive imports the handler, and every sentiment module it loads comes from the archive."""
    with zipfile.ZipFile(ROOT / "model_store" / "sentiment.mar") as mar:
        mar.extractall(tmp_path)
    script = "\n".join([
        "import sys",
        f"sys.path.insert(0, {str(tmp_path)!r})",  # what TorchServe's worker does with the model folder
        "import handler",
        "loaded = {name: module.__file__ for name, module in sys.modules.items() if name.split('.')[0] in ('sentiment', 'handler')}",
        f"outside = {{name: path for name, path in loaded.items() if not path.startswith({str(tmp_path)!r})}}",
        "assert not outside, outside",
        "assert 'sentiment.serving.handler' in loaded, sorted(loaded)",
        "try:",
        "    import sentiment.training",
        "except ImportError:",
        "    print('ok', len(loaded))",
    ])
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:] or result.stdout
