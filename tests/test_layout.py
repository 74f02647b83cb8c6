"""The package's shape: layers import downwards only, no import cycle, one module renames into place,
modules and functions stay short, and ``import lora_ft`` loads no torch (README.md, "Layout")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lora_ft"

# Bottom to top; a module may import its own layer and the ones below it. Base modules are top-level
# files; every other layer is a subpackage of the same name (config is the one top-level recipe module
# that data, training, serving and compare all read, so it sits below them).
LAYERS = ("base", "lora", "config", "data", "training", "serving", "compare", "cli")
BASE = {
    "lora_ft",
    "lora_ft.errors",
    "lora_ft.fsutil",
    "lora_ft.finite",
    "lora_ft.failures",
    "lora_ft.fmt",
    "lora_ft.lazy",
    "lora_ft.outputs",
    "lora_ft.figures",
}
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
LONG_MODULE = "# Over 350 lines:"
LONG_FUNCTION = "# Over 60 lines:"
# The one module that renames into place, and checkpoint rotation (the Trainer's own directories).
RENAMERS = {"lora_ft.fsutil"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(name: str) -> set[str]:
    """Every lora_ft module ``name`` imports, at the top or inside a function (TYPE_CHECKING excluded)."""
    tree = ast.parse(MODULES[name].read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("lora_ft") and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def layer_of(name: str) -> str:
    if name in BASE:
        return "base"
    if name == "lora_ft.__main__":
        return "cli"
    layer = name.split(".")[1]
    assert layer in LAYERS, f"{name} is in no layer: put it in a subpackage of {LAYERS} or add it to BASE"
    return layer


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_imports_flow_downwards_only():
    upward = [
        f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})"
        for name, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(name))
    ]
    assert not upward, "imports from a lower layer into a higher one:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycle():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_fsutil_renames_into_place():
    calls = {"os.replace", "os.rename", "shutil.move"}
    found = []
    for name, path in MODULES.items():
        if name in RENAMERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                text = ast.unparse(node.func)
                if text in calls or node.func.attr == "rename":
                    found.append(f"{name}:{node.lineno} {text}")
    assert not found, "rename into place through lora_ft.fsutil, not here: " + ", ".join(found)


def test_modules_and_functions_are_short_or_say_why():
    long = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES and not any(line.startswith(LONG_MODULE) for line in lines[:15]):
            long.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                body = lines[node.lineno - 1 : node.body[0].lineno]
                if length > MAX_FUNCTION_LINES and not any(LONG_FUNCTION in line for line in body):
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, (
        f"over {MAX_MODULE_LINES} lines per module / {MAX_FUNCTION_LINES} per function without "
        f"a '{LONG_MODULE} why' or '{LONG_FUNCTION} why' comment: " + ", ".join(long)
    )


@pytest.mark.parametrize(
    "code",
    [
        "import lora_ft",
        "import lora_ft.config",
        "from lora_ft.cli.app import app",
    ],
)
def test_light_imports_load_no_torch(code):
    probe = f"{code}; import sys; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{code!r} imported {out.strip()}"


def test_lazy_names_resolve_to_their_definitions():
    import lora_ft
    from lora_ft.lora.inject import merge_lora
    from lora_ft.lora.layer import LoRALinear

    assert lora_ft.LoRALinear is LoRALinear and lora_ft.merge_lora is merge_lora
    assert set(lora_ft.__all__) == {"LoraFtError", "__version__", *lora_ft._LAZY}
    assert set(lora_ft.__all__) <= set(dir(lora_ft))
    import lora_ft.lora

    assert set(lora_ft.lora.__all__) == set(lora_ft.lora._LAZY)
    assert lora_ft.lora.LoRALinear is LoRALinear
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lora_ft.nope  # noqa: B018
