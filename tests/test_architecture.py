"""The package's structure, read from its source with ``ast``: no import cycle, no import from a lower floor to a
higher one, a command line that only dispatches, and one name per table entry."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pose_toss"

# Floors, from the ground up: a module imports only from its own floor or below.
FLOORS = (
    ("foundation", ("pose_toss.config", "pose_toss.outputs", "pose_toss.run_dir", "pose_toss.skeletons")),
    ("math", ("pose_toss.covariance", "pose_toss.losses", "pose_toss.pseudo_labels", "pose_toss.metrics")),
    ("data", ("pose_toss.data", "pose_toss.viz", "pose_toss.coco_results")),
    ("models", ("pose_toss.models", "pose_toss.embedding_bank", "pose_toss.tracking")),
    ("engine", ("pose_toss.engine",)),
    ("commands", ("pose_toss.commands", "pose_toss.cli", "pose_toss.__main__")),
)


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pose_toss"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("pose_toss")]
        found |= {n for n in names if n in known}
    return found - {"pose_toss"}  # ``from pose_toss import losses`` is an import of pose_toss.losses


def floor_of(module: str) -> int:
    for level, (_, prefixes) in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{module} stands on no floor: add it to FLOORS")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_every_module_stands_on_a_floor_and_imports_nothing_above_it():
    upward = []
    for module, deps in graph().items():
        if module == "pose_toss":  # the package's face: its names load lazily, from every floor
            continue
        upward += [f"{module} ({FLOORS[floor_of(module)][0]}) -> {d} ({FLOORS[floor_of(d)][0]})"
                   for d in sorted(deps) if floor_of(d) > floor_of(module)]
    assert not upward, "imports from a lower floor to a higher one:\n" + "\n".join(upward)


def test_no_import_cycle():
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_a_cycle_is_caught(tmp_path, monkeypatch):
    """The cycle test can fail: two modules that import each other are reported."""
    pkg = tmp_path / "pose_toss"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pose_toss.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from pose_toss.a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycle()


def test_the_command_line_only_dispatches_and_every_command_has_its_module():
    from pose_toss.commands import COMMANDS, command_module

    tree = ast.parse((PACKAGE / "cli.py").read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert functions == {"build_parser", "main"}, functions
    for name in COMMANDS:
        module = command_module(name)
        assert callable(module.add_arguments) and callable(module.run), name
    assert {p.stem for p in (PACKAGE / "commands").glob("*.py")} - {"__init__", "options"} == \
        {module for module, _ in COMMANDS.values()}


@pytest.mark.slow
def test_help_imports_no_torch_and_names_every_command():
    code = ("import sys; from pose_toss.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "try:\n    main(['smooth', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False"), out
    from pose_toss.commands import COMMANDS

    assert all(name in out for name in COMMANDS)


def test_each_table_spells_the_names_the_config_accepts():
    from pose_toss import config
    from pose_toss.engine.objectives import LOSSES, METHODS
    from pose_toss.models.covariance_heads import COVARIANCE_HEADS

    assert set(LOSSES) == set(config.LOSSES)
    assert set(COVARIANCE_HEADS) == set(config.COVARIANCES)
    assert all(m.covariance in config.COVARIANCES and set(m.losses) <= set(LOSSES) for m in METHODS.values())
    model_options = {f.name for f in __import__("dataclasses").fields(config.ModelConfig)}
    for head in COVARIANCE_HEADS.values():  # every option a head takes is the model config's, by that name
        assert set(head.OPTIONS) - {"init_std"} <= model_options, head.__name__
