"""The package's import graph (function-level imports included): no circles, and the layers: the core
(``nextscale``) imports none of the others; the two families (``var``, ``flowar``) import only the core, and
the models made of both are in ``crossfamily``; the metrics library (``compare.metrics``) imports only the
core, torch, numpy, scipy, pillow and the standard library, never the harness around it."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nextscale", "var", "flowar", "crossfamily", "compare", "experiments")
# layer -> the other layers it may import (a layer is a package, or compare.metrics within compare); the
# harness (the rest of compare) and the experiments may import any layer
LAYERS = {"nextscale": set(), "var": {"nextscale"}, "flowar": {"nextscale"},
          "crossfamily": {"nextscale", "var", "flowar"}, "compare.metrics": {"nextscale"}}
METRICS_THIRD_PARTY = {"torch", "numpy", "scipy", "PIL"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every name imported anywhere in ``path`` (relative imports resolved; ``from pkg import x`` gives
    ``pkg`` and ``pkg.x``)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return found


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (``from pkg import mod`` counts as importing ``pkg.mod``
    when that is a module)."""
    return {n for n in imported_names(path) if n in modules and n != module_name(path)}


def project_files() -> list[Path]:
    return [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]


def layer(module: str) -> str:
    return "compare.metrics" if module.startswith("compare.metrics") else module.split(".")[0]


def test_each_layer_imports_only_the_layers_below_it():
    files = project_files()
    modules = {module_name(p) for p in files}
    assert set(LAYERS) <= {layer(m) for m in modules}
    wrong = {(module_name(p), i) for p in files if layer(module_name(p)) in LAYERS
             for i in imports_of(p, modules) if layer(i) not in LAYERS[layer(module_name(p))] | {layer(module_name(p))}}
    assert not wrong, sorted(wrong)


def test_the_metrics_import_no_other_library():
    allowed = METRICS_THIRD_PARTY | set(sys.stdlib_module_names) | {"nextscale", "compare"}
    wrong = {(module_name(p), n) for p in (ROOT / "compare" / "metrics").rglob("*.py")
             for n in imported_names(p) if n.split(".")[0] not in allowed}
    assert not wrong, sorted(wrong)


def test_no_import_circles():
    files = project_files()
    modules = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, modules) for p in files}
    # a package's __init__ importing its own modules is not a circle; every other path is
    edges = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in graph.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for i in edges.get(m, ()):
            if state.get(i) == "open":
                cycles.append(stack[stack.index(i):] + [i])
            elif i not in state:
                visit(i, stack + [i])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
