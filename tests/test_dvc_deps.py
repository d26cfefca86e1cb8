"""Every dvc.yaml stage depends on all the searchr1 code it runs, so no change to code can leave a stale
output behind (`dvc repro` and the Prefect skip logic both key on these deps).

The code a stage runs is derived from the source: the stage function in stages.py, the stages.py
helpers it calls, and every searchr1 module they import, transitively (imports inside functions
included: they run too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from searchr1.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imported_modules(nodes: list[ast.AST], package: str) -> set[str]:
    """searchr1 modules imported anywhere under ``nodes`` (``package``: for relative imports)."""
    found: set[str] = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("searchr1")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("searchr1"):
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}")}
    return found


def closure(start: set[str]) -> set[Path]:
    """Files of ``start`` and of every searchr1 module they import, with their packages' __init__."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b
        path = module_file(name)
        package = name if path.name == "__init__.py" else ".".join(parts[:-1])
        todo += imported_modules([ast.parse(path.read_text())], package)
    return {module_file(n) for n in seen}


def stage_code(stage: str) -> set[Path]:
    """The files a stage's function runs: stages.py, its helpers it calls, and their imports."""
    tree = ast.parse((SRC / "searchr1" / "stages.py").read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    module_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    used, todo = set(), [STAGES[stage].__name__]
    while todo:
        name = todo.pop()
        if name in used:
            continue
        used.add(name)
        todo += [c.func.id for c in ast.walk(functions[name])
                 if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in functions]
    return closure(imported_modules(module_level + [functions[n] for n in used], "searchr1")) | {
        SRC / "searchr1" / "stages.py"
    }


DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_depends_on_all_the_code_it_runs(stage):
    deps = [d if isinstance(d, str) else next(iter(d)) for d in DVC[stage].get("deps", [])]
    code_deps = [ROOT / d for d in deps if d.startswith("src/")]

    def covered(path: Path) -> bool:
        return any(path == d or d in path.parents for d in code_deps)

    missing = sorted(str(p.relative_to(ROOT)) for p in stage_code(stage) if not covered(p))
    assert not missing, f"dvc.yaml stage {stage!r} runs code it does not depend on: {missing}"


def test_the_closure_sees_lazy_imports_inside_functions():
    train = {str(p.relative_to(SRC)) for p in stage_code("train")}
    assert {"searchr1/rl/trainer.py", "searchr1/rl/actor.py", "searchr1/rollout/loop.py", "searchr1/prompts.py",
            "searchr1/models/copy_llama.py", "searchr1/rewards/__init__.py"} <= train
