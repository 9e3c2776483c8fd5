"""The package's shape: no import cycle anywhere in embrm/ (imports inside functions included), and embrm's own
imports at the top of each module so its first lines say what it depends on."""

import ast
from pathlib import Path

import embrm

ROOT = Path(embrm.__file__).parent
# Heavy optional dependencies may be imported where they are used; embrm's own modules may not.
LAZY_OK = ("torch", "lightgbm", "sentence_transformers", "transformers", "ray", "httpx", "matplotlib", "gguf",
           "multiprocessing", "concurrent", "rich.markdown")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def embrm_imports(tree: ast.AST, name: str):
    """(imported embrm module, node) for every import of an embrm module in the tree."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((a.name, node) for a in node.names if a.name.split(".")[0] == "embrm")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "embrm":
                continue
            for alias in node.names:  # `from embrm.cli import data` imports the module embrm.cli.data
                sub = f"{base}.{alias.name}"
                yield (sub if sub in MODULES else base), node


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        edges[name] = {target for target, _ in embrm_imports(tree, name) if target in MODULES and target != name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_embrm():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_embrm_modules_are_imported_at_the_top():
    late = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        late += [f"{path.relative_to(ROOT.parent)}:{node.lineno} imports {target}"
                 for target, node in embrm_imports(tree, name) if id(node) not in top]
    assert not late, "\n".join(late)
