"""diffctl.envs and diffctl.datasets have no import cycles, and datasets build on envs, never the reverse
(issue 27). Every import statement counts, top-level or inside a function, as in the repository's
import-cycle check; the names that moved stay importable from where they were."""

import ast
from pathlib import Path

import pytest

import diffctl

ROOT = Path(diffctl.__file__).resolve().parent
PACKAGES = ("diffctl.envs", "diffctl.datasets")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["diffctl", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            src = node.module or ""
            if node.level:
                pkg = base
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                src = f"{pkg}.{src}" if src else pkg
            names += [f"{src}.{a.name}" for a in node.names]
    return {t for t in (_resolve(n, modules) for n in names) if t and t != module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items() if m.startswith(PACKAGES)}


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def test_no_import_cycle_in_envs_or_datasets(graph):
    cycles = sorted(m for m in graph if _reaches(graph, m, m))
    assert cycles == []


def test_envs_never_imports_datasets(graph):
    envs = [m for m in graph if m.startswith("diffctl.envs")]
    assert len(envs) > 5
    assert [(m, t) for m in envs for t in sorted(graph[m]) if t.startswith("diffctl.datasets")] == []


def test_moved_names_stay_importable():
    from diffctl.datasets import generators, scores
    from diffctl.datasets.generators import catalog
    from diffctl.envs import registry, tasks

    for name in ("TASKS", "TaskSpec", "get_task", "normalized_score", "task_names", "DATASET_SUFFIXES"):
        assert getattr(registry, name) is getattr(tasks, name)
    for name in ("base_task_name", "register_robotics_envs"):
        assert getattr(registry, name) is getattr(tasks, name)
    for name in ("REFERENCE_SCORES", "normalized_score", "reference_task"):
        assert getattr(scores, name) is getattr(tasks, name)
    for name in ("DATASETS", "MAZE_DATASETS", "LOCOMOTION_DATASETS", "LOCOMOTION_TASKS", "LOCOMOTION_KINDS"):
        assert getattr(generators, name) is getattr(catalog, name)
    assert diffctl.envs.normalized_score is tasks.normalized_score
    assert diffctl.datasets.normalized_score is tasks.normalized_score


def test_reference_scores_are_the_task_specs():
    from diffctl.envs.tasks import REFERENCE_SCORES, TASKS, normalized_score

    specs = [s for s in TASKS.values() if s.ref_min_score is not None]
    assert {s.name: (s.ref_min_score, s.ref_max_score) for s in specs} == REFERENCE_SCORES
    assert "pusht" not in REFERENCE_SCORES
    assert normalized_score("hopper-medium-v2", 3234.3) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no D4RL reference score"):
        normalized_score("pusht", 1.0)
