"""The layout is the architecture (docs/ARCHITECTURE.md): each module imports only its own layer and the
layers below it, no import circle, the stage declarations light enough for `rlhf --help`, and every
function ARCHITECTURE.md names as the home of an InstructGPT equation exists there."""

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "tiny_world", "stages", "labeling_ui", "pipeline", "bench")
STAGE_PACKAGES = ("pretrain", "demonstrate", "sft", "sft_lora", "sft_bitune", "sft_cmlm", "sample", "label", "rm", "ppo", "ppo_no_ptx", "ppo_grpo",
                  "ppo_dr_grpo", "ppo_rloo", "ppo_reinforce_pp", "ppo_reinforce_pp_baseline", "dpo", "eval")

# bottom to top: a module imports its own layer (package) and the layers below it; two packages on one
# floor do not import each other (the stages among them)
LAYERS = {
    "common": 0, "tiny_world": 0,
    "stages.core": 1, "labeling_ui": 1,
    "stages.models": 2,
    "stages.data": 3,
    "stages.runtime": 4,
    "stages.scoring": 5,
    **{f"stages.{name}": 6 for name in STAGE_PACKAGES},
    "stages.registry": 7,
    "entry points": 8,
    "pipeline": 8,
    "bench": 9,
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[-1] == "__main__" and parts[0] == "stages":
        return "entry points"  # python -m stages.<name>: the top of its stage, above the registry it asks
    return ".".join(parts[:2]) if parts[0] == "stages" and len(parts) > 1 else parts[0]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project's modules that `path` imports, at module level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in known}


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m != "stages" and layer_of(m) not in LAYERS]
    assert not unplaced, f"add these to LAYERS and to docs/ARCHITECTURE.md: {unplaced}"


def test_no_module_imports_a_layer_above_it_and_stages_do_not_import_each_other():
    found = modules()
    wrong = []
    for module, path in found.items():
        if module == "stages":
            continue
        mine = layer_of(module)
        for imported in imports_of(path, set(found)):
            theirs = layer_of(imported)
            if imported == "stages" or theirs == mine:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_only_the_demonstrate_sample_and_label_stages_reach_the_ranking_database():
    # the other stages know labeling only by the export format they read
    found = modules()
    users = {layer_of(m) for m, p in found.items() if any(i.startswith("labeling_ui") for i in imports_of(p, set(found)))}
    assert users - {"labeling_ui"} <= {"stages.demonstrate", "stages.sample", "stages.label", "pipeline", "bench"}, users


def test_no_import_circle():
    found = modules()
    graph = {m: imports_of(p, set(found)) - {m} for m, p in found.items()}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for child in graph[node]:
            if state.get(child) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(child):] + [child]))
            if child not in state:
                visit(child, path + [child])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_math_imports_only_torch_and_the_standard_library():
    for path in (REPO / "stages" / "core").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    assert top in sys.stdlib_module_names or top == "torch" or name.startswith("stages.core"), (path, name)


def test_the_orchestration_reads_the_stages_without_torch():
    # rlhf --help and the graph stay instant: the declarations import no model code
    code = "import sys, pipeline.cli, pipeline.runner, stages.registry; print(sorted({'torch', 'transformers', 'deepspeed', 'ray'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


def named_functions() -> list[tuple[str, str]]:
    """(module path, function) for every `path.py` `name` pair ARCHITECTURE.md gives as a home."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    return re.findall(r"`([\w/]+\.py)` `(\w+)`", text)


def test_architecture_names_the_home_of_every_instructgpt_equation():
    pairs = named_functions()
    assert len(pairs) >= 10
    for path, name in pairs:
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, name, None) is not None, f"docs/ARCHITECTURE.md names {path} {name}, which does not exist"


@pytest.mark.parametrize("stage", STAGE_PACKAGES)
def test_every_stage_runs_as_a_module(stage):
    assert (REPO / "stages" / stage / "__main__.py").is_file()
