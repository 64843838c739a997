"""The kernel's layout as promised: no import cycle (counting imports inside functions and under
TYPE_CHECKING), an engine that never sees a recipe, and reports that never import torch."""

import ast
import copy
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_TOY, run_cli

KERNEL = Path(__file__).resolve().parents[1] / "kdcore"


def kernel_imports() -> dict[str, set[str]]:
    """Module → the kernel modules it imports, read with ast (every import statement)."""
    modules = {}
    for path in KERNEL.rglob("*.py"):
        parts = path.relative_to(KERNEL.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(target: str) -> str | None:
        parts = target.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or None

    edges = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            found |= {m for t in targets if t.startswith("kdcore") and (m := resolve(t)) and m != name}
        edges[name] = found
    return edges


def test_no_import_cycle_in_the_kernel():
    edges = kernel_imports()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            assert state.get(target) != "open", "import cycle: " + " -> ".join(path + [module, target])
            if target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])


def test_the_engine_knows_no_recipe_and_the_results_no_trainer():
    edges = kernel_imports()
    for module, targets in edges.items():
        if module.startswith("kdcore.engine"):
            assert not {t for t in targets if t.startswith(("kdcore.config", "kdcore.distill"))}, module
        if module.startswith("kdcore.results"):
            assert not {t for t in targets if t.startswith(("kdcore.engine", "kdcore.distill", "kdcore.nn"))}, module


def test_kdcore_report_does_not_import_torch(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = copy.deepcopy(TINY_TOY)
    recipe["teacher"]["epochs"] = recipe["student"]["epochs"] = 1
    assert run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--run-dir", tmp_path / "run")[0] == 0
    probe = ("import sys; from kdcore.cli import main; sys.argv = ['kdcore', 'report', sys.argv[1]]\n"
             "try:\n    main()\nexcept SystemExit as end:\n    assert end.code in (0, None), end.code\n"
             "assert 'torch' not in sys.modules, 'kdcore report imported torch'\nprint('no torch')")
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 0 and "no torch" in result.stdout, result.stderr
