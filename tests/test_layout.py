"""The runtime stands alone: it imports nothing from the benchmark or the training code, and its
modules import each other without circles (at import time)."""
import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "specdec"


def module_name(path: Path) -> str:
    parts = path.relative_to(RUNTIME.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def runtime_modules() -> dict[str, Path]:
    return {module_name(p): p for p in RUNTIME.rglob("*.py")}


def test_the_runtime_imports_neither_bench_nor_train():
    offending = {name: sorted(m for m in imports(path, top_level_only=False)
                              if m.startswith(("specdec.bench", "specdec.train", "bench.", "train.")))
                 for name, path in runtime_modules().items()}
    assert not {k: v for k, v in offending.items() if v}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A path of imports that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [])):
            return found
    return None


def test_runtime_modules_import_without_circles():
    modules = runtime_modules()
    graph = {}
    for name, path in modules.items():
        found = imports(path, top_level_only=True)
        # ``from . import x`` imports module x (the package itself is always imported first, never a circle)
        graph[name] = {m for m in found if m in modules and m != name and not name.startswith(m + ".")
                       and not any(other.startswith(m + ".") and other in modules for other in found)}
    assert find_circle(graph) is None


def test_the_check_sees_a_circle():
    """Negative control: the search finds a circle where there is one."""
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None
