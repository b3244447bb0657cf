"""The package's shape (docs/architecture.md): layers that import only downwards, no import circle, no module taking
another's underscored name, no process-wide state read across modules, and few modules at the top."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "probe"

# Lowest first. A module may import from a lower layer, or from its own subpackage (without a circle); never from a
# higher layer, nor from another subpackage of its own layer.
LAYERS = [
    ("probe.errors", "probe.version"),
    ("probe.utils",),
    ("probe.metrics", "probe.similarity", "probe.plots"),
    ("probe.models",),
    ("probe.training",),
    ("probe.backbones",),
    ("probe.data",),
    ("probe.features", "probe.ensemble"),
    ("probe.sweeps",),
    ("probe.tasks",),
    ("probe.experiments",),
    ("probe.api",),
    ("probe.cli",),
    ("probe", "probe.__main__"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def home(module: str) -> tuple[int, str]:
    """(layer index, unit) of a module: the unit is its layer entry (a subpackage or a top-level module)."""
    for index, units in enumerate(LAYERS):
        for unit in sorted(units, key=len, reverse=True):
            if module == unit or (unit != "probe" and module.startswith(unit + ".")):
                return index, unit
    raise AssertionError(f"{module} belongs to no layer of tests/test_layout.py: add it to LAYERS")


def imports(module: str) -> list[tuple[str, list[str]]]:
    """(imported probe module, the names taken from it) for every import statement in `module`, top-level or not."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "probe"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "probe":
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    found.append((f"{base}.{alias.name}", []))
                else:
                    found.append((base, [alias.name]))
    return [(target if target in MODULES else _owner(target), names) for target, names in found]


def _owner(name: str) -> str:
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


GRAPH = {module: sorted({target for target, _ in imports(module) if target != module}) for module in MODULES}


def test_every_import_runs_down_the_layers():
    upward = []
    for module, targets in GRAPH.items():
        level, unit = home(module)
        for target in targets:
            target_level, target_unit = home(target)
            if target_level > level or (target_level == level and target_unit != unit):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that run up or across a layer:\n" + "\n".join(upward)


def test_no_import_circle():
    circles, done, path = [], set(), []

    def visit(module: str) -> None:
        if module in path:
            circles.append(" -> ".join([*path[path.index(module):], module]))
            return
        if module in done:
            return
        path.append(module)
        for target in GRAPH[module]:
            if home(target)[1] == home(module)[1]:  # across units the layer test already forbids circles
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(MODULES):
        visit(module)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_module_takes_another_modules_underscored_name():
    taken = [f"{module} takes {name} from {target}" for module in MODULES for target, names in imports(module)
             for name in names if name.startswith("_") and not name.startswith("__") and target != module]
    assert not taken, "\n".join(taken)


def test_the_top_of_the_package_holds_at_most_ten_modules():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top


MEMOS = {  # name: what it remembers within one process
    "probe.backbones.base._LOADED": "loaded weights by checkpoint, so a sweep's cells share one copy",
    "probe.sweeps.plan._SHAPES": "a backbone's feature shapes by identity, found once per process",
    "probe.utils.runtime._freed_memory_kept": "whether glibc already keeps freed memory (mallopt, once per process)",
}


def test_no_module_keeps_counters_or_pending_state_for_others():
    """Class-level counters bumped in place, context variables, `global` and module-level lists or dicts written from
    functions are channels between modules that no signature shows. Only the private per-process memos in MEMOS
    remain, each read by its own module alone."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Attribute) and \
                    isinstance(node.target.value, ast.Name) and node.target.value.id[:1].isupper():
                found.append(f"{module}: {node.target.value.id}.{node.target.attr} += ...")
            if isinstance(node, ast.Global) and any(f"{module}.{name}" not in MEMOS for name in node.names):
                found.append(f"{module}: global {', '.join(node.names)}")
            if isinstance(node, (ast.Import, ast.ImportFrom)) and any(a.name == "contextvars" for a in node.names):
                found.append(f"{module}: a context variable")
        mutable = {target.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                   for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                   if isinstance(target, ast.Name) and target.id.startswith("_") and
                   isinstance(node.value, (ast.List, ast.Dict, ast.Set, ast.Call))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id in mutable and \
                    f"{module}.{node.value.id}" not in MEMOS:
                found.append(f"{module}: writes the module-level {node.value.id}")
    assert not found, "\n".join(found)


def test_only_the_backbones_package_branches_on_a_backbones_kind():
    """`kind == "ddpm"`, `kind in (...)`, `isinstance(x, SomeBackbone)` (any class of probe.backbones) outside
    probe.backbones: what the others ask of a kind belongs on the Backbone contract or in probe.backbones.spec. A
    lookup in the module's own table keyed by kind (`kind not in PATTERNS`, PATTERNS a module-level dict) is data,
    not a branch."""
    found = []
    for module, path in MODULES.items():
        if module.startswith("probe.backbones"):
            continue
        tree = ast.parse(path.read_text())
        tables = {target.id for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                  for target in node.targets if isinstance(target, ast.Name)}
        classes = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   for alias in node.names if f"{node.module}.{alias.name}".startswith("probe.backbones")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(_names_kind(side) for side in [node.left, *node.comparators]) \
                    and not _looks_up(node, tables):
                found.append(f"{module}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance" and \
                    len(node.args) == 2 and (_names(node.args[1]) & classes or "probe.backbones" in ast.unparse(node)):
                found.append(f"{module}:{node.lineno} isinstance")
    assert not found, "kind checks outside probe.backbones:\n" + "\n".join(found)


def _looks_up(node: ast.Compare, tables: set[str]) -> bool:
    """`kind in TABLE` / `kind not in TABLE` with TABLE one of the module's dicts."""
    return len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn)) and _names_kind(node.left) and \
        isinstance(node.comparators[0], ast.Name) and node.comparators[0].id in tables


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _names_kind(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "kind") or (
        isinstance(node, ast.Attribute) and node.attr == "kind" and not ast.unparse(node).endswith("noise.kind"))


def test_the_layers_test_knows_every_module():
    assert all(home(module) for module in MODULES)


def test_no_backbone_family_imports_another():
    """A family module (one whose class probe.backbones.registry.BACKBONES names) takes what it shares with the others
    from the shared modules of probe.backbones (base, spec, noise, folders, diffusers_common, latent_diffusion), never
    from another family."""
    tree = ast.parse(MODULES["probe.backbones.registry"].read_text())
    homes = {alias.asname or alias.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    table = next(node.value for node in tree.body if isinstance(node, ast.Assign) and
                 any(isinstance(target, ast.Name) and target.id == "BACKBONES" for target in node.targets))
    families = {homes[value.id] for value in table.values}
    crossing = [f"{module} -> {target}" for module in sorted(families) for target in GRAPH[module]
                if target in families and target != module]
    assert len(families) > 1 and not crossing, "families importing another family:\n" + "\n".join(crossing)
