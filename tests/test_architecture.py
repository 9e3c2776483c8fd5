"""The package's shape: at most 15 entries at the top of embrm/, packages in layers (each imports only the layers
below it, and another package only through its public namespace), no import cycle anywhere (imports inside
functions included), embrm's own imports at the top of each module so its first lines say what it depends on, and
`import embrm` / `import embrm.cli` free of the heavy libraries (torch, transformers, Ray, LightGBM ...)."""

import ast
import subprocess
import sys
from pathlib import Path

import embrm

ROOT = Path(embrm.__file__).parent
# The layers, lowest first: a package may import its own layer's modules and any package of a lower layer.
LAYERS = [("core",), ("data",), ("embedding",), ("evaluation",), ("rewards",), ("pipeline",), ("methods", "active", "rl", "serve"),
          ("studies",), ("cli",), ("",)]  # "": embrm's own __init__, __main__ and _compat
LAYER = {package: rank for rank, names in enumerate(LAYERS) for package in names}


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


def package_of(module: str) -> str:
    """The top-level package of an embrm module ("" for embrm/__init__, __main__ and _compat)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (ROOT / parts[1]).is_dir() else ""


def test_embrm_has_at_most_15_top_level_entries():
    entries = sorted(p.name for p in ROOT.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 15, entries
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYER) - {""}, "every package has a layer in LAYERS, and every layer a package"


def test_packages_import_only_packages_below_them():
    upward = [f"{name} imports {target}" for name, targets in graph().items() for target in targets
              if package_of(target) != package_of(name) and LAYER[package_of(target)] >= LAYER[package_of(name)]]
    assert not upward, "\n".join(upward)


def test_other_packages_are_imported_through_their_public_names():
    """`from embrm.evaluation import bon_curves`, never `from embrm.evaluation._bon import ...` from outside."""
    private = []
    for name, path in MODULES.items():
        for target, node in embrm_imports(ast.parse(path.read_text()), name):
            if package_of(target) != package_of(name) and any(p.startswith("_") for p in target.split(".")[2:]):
                private.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} imports {target}")
    assert not private, "\n".join(private)


def test_the_layer_check_sees_an_upward_import():
    assert LAYER[package_of("embrm.evaluation._bon")] < LAYER[package_of("embrm.studies._run")]
    assert package_of("embrm._compat") == "" and package_of("embrm.cli.model") == "cli"


# ----------------------------------------------------------------------------- what `import embrm` loads

HEAVY = {"torch", "transformers", "sentence_transformers", "ray", "lightgbm"}


def loaded_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_importing_embrm_and_its_cli_loads_no_heavy_library():
    """`embrm --help` answers at once: torch, transformers, sentence-transformers, Ray and LightGBM load only when a
    command needs them (imports inside the functions that use them)."""
    assert not loaded_after("import embrm") & HEAVY
    assert not loaded_after("import embrm.cli") & HEAVY


def test_the_heavy_import_check_sees_a_fit_load_torch():
    """The check above can fail: the same probe sees torch once a fit's thread policy (and its heads) need it."""
    assert "torch" in loaded_after("import embrm\nfrom embrm.core import fit_threads\nwith fit_threads(): pass")


# The one path: only these packages call these steps (everything else asks them).
ONLY_CALLED_IN = {"bon_curves": "evaluation", "simulate_pairs": "pipeline", "fit_ensemble": "pipeline"}


def calls_outside_their_package(edges_from=MODULES) -> list[str]:
    found = []
    for name, path in edges_from.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                home = ONLY_CALLED_IN.get(called)
                if home and package_of(name) != home:
                    found.append(f"{name}:{node.lineno} calls {called}")
    return found


def test_split_labels_fits_and_best_of_n_come_from_the_pipeline_and_evaluation():
    assert not calls_outside_their_package(), "\n".join(calls_outside_their_package())


def test_the_call_check_sees_a_call_outside(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text("from embrm.evaluation import bon_curves\nbon_curves(1, 2, 3)\n")
    assert calls_outside_their_package({"embrm.methods._stray": stray}) == ["embrm.methods._stray:2 calls bon_curves"]
