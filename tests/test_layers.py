"""House rules a reader relies on: `pipelines/` is laid out by method with imports running one way, works without
Gradio, and no attack prompt is ever a UI example."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DATA = ROOT.parent / "shared" / "data"
ATTACK_SETS = ("i2p-sexual-violence.csv", "nudity-ring-a-bell.csv", "nudity-unlearndiff.csv", "safree-t2v.json")


def test_every_pipelines_module_imports_without_gradio():
    """In a fresh interpreter: import every module under pipelines/ (walked, not listed), then Gradio must not be
    loaded. A module that imports it, even indirectly through studio/, fails here."""
    code = (
        "import importlib, pkgutil, sys, pipelines\n"
        "names = [m.name for m in pkgutil.walk_packages(pipelines.__path__, 'pipelines.')]\n"
        "[importlib.import_module(n) for n in names]\n"
        "assert len(names) >= 20, names\n"
        "bad = sorted(m for m in sys.modules if m == 'gradio' or m.startswith(('gradio.', 'studio')))\n"
        "assert not bad, bad\n"
        "print(len(names))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= 20


# ----------------------------------------------------------------- the layout: one package per method, two layers below
PIPELINES = ROOT / "pipelines"
LAYERS = ("core", "sd15")
METHODS = ("timelapse", "identity", "safety", "segmentation")
# What each package may import (besides itself). The generating methods use the guard that guards them; nothing else
# crosses between methods. A new package must be placed here before it can land.
MAY_USE = {
    "core": set(),
    "sd15": {"core"},
    "safety": {"core", "sd15"},
    "timelapse": {"core", "sd15", "safety"},
    "identity": {"core", "sd15", "safety"},
    "segmentation": {"core", "sd15"},
}


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, module) for every import in `source`, the ones inside functions included (lazy imports count too),
    relative imports resolved against `module`; `from a import b` names `a.b` when b may be a module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[:-node.level]
                base = ".".join([*parent, base] if base else parent)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pipelines" and len(parts) > 1 else None


def wrong_way(module: str, source: str) -> list[str]:
    """Every import of `module` (in package `layer_of(module)`) that runs against MAY_USE, said as a reader needs it."""
    own, problems = layer_of(module), []
    for line, target in imported_modules(source, module):
        top = target.split(".")[0]
        if top in ("studio", "gradio", "app"):
            problems.append(f"{module}:{line} imports {target}: pipelines/ never imports the UI")
            continue
        other = layer_of(target)
        if top == "pipelines" and other not in MAY_USE:
            problems.append(f"{module}:{line} imports {target}: not in the layout; import the module that defines it")
        elif other is not None and other != own and other not in MAY_USE.get(own, set()):
            problems.append(f"{module}:{line} imports {target}: {own}/ may use only "
                            f"{', '.join(sorted(MAY_USE.get(own, ()))) or 'itself'}")
    return problems


def pipeline_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PIPELINES.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_pipelines_is_one_package_per_method_on_two_shared_layers():
    """Every module sits in a known package (no flat module beside them), and every package says what it is."""
    packages = {p.name for p in PIPELINES.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages == set(LAYERS + METHODS) == set(MAY_USE)
    assert [p.name for p in PIPELINES.glob("*.py")] == ["__init__.py"]
    for name, path in pipeline_modules().items():
        assert name == "pipelines" or layer_of(name) in MAY_USE, name
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 40, f"{path.relative_to(ROOT)} has no opening comment saying what it is"
    for package in (*LAYERS, *METHODS, "segmentation/vdit"):
        doc = ast.get_docstring(ast.parse((PIPELINES / package / "__init__.py").read_text()))
        assert "first" in doc, f"pipelines/{package}/__init__.py should say which file to open first"


def test_every_import_in_pipelines_runs_the_allowed_way():
    modules = pipeline_modules()
    assert len(modules) >= 35
    problems = [p for name, path in modules.items() for p in wrong_way(name, path.read_text())]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("pipelines.core.cache", "from pipelines.timelapse.pipeline import CONTEXT_FRAMES", "core/ may use only itself"),
    ("pipelines.sd15.models", "def f():\n    from pipelines.identity import convert", "sd15/ may use only core"),
    ("pipelines.identity.models", "from pipelines.timelapse.models import STYLES", "identity/ may use only"),
    ("pipelines.segmentation.pipeline", "from ..safety.guard import SafetyGuard", "segmentation/ may use only"),
    ("pipelines.timelapse.pipeline", "import studio.engine", "never imports the UI"),
    ("pipelines.timelapse.pipeline", "from pipelines import registry", "import the module that defines it"),
])
def test_the_import_check_catches_an_import_the_wrong_way(module, source, expected):
    """The check itself: each kind of wrong-way import, lazy and relative ones too, is named."""
    problems = wrong_way(module, source)
    assert len(problems) == 1 and expected in problems[0]
    assert not wrong_way("pipelines.timelapse.pipeline", "from pipelines.safety.guard import SafetyGuard\n"
                                                        "from pipelines.sd15 import tiny\nimport torch")


def test_studio_evaluate_is_one_module_per_evaluation():
    from studio.evaluate import cli

    names = [e.__name__.rsplit(".", 1)[-1] for e in cli.EVALUATIONS]
    assert names == ["identity", "timelapse", "safety", "segmentation"]          # one per tab
    assert all(callable(e.add_parser) and callable(e.run_evaluation) for e in cli.EVALUATIONS)
    # Every other module of the folder is shared plumbing, not a hidden evaluation.
    shared = {"__init__", "__main__", "cli", "common", "report", "clip"}
    modules = {p.stem for p in (ROOT / "studio" / "evaluate").glob("*.py")}
    assert modules == shared | set(names)


def attack_prompts() -> set[str]:
    prompts = set()
    for name in ATTACK_SETS:
        path = DATA / name
        if name.endswith(".json"):
            prompts |= {row[-1] for row in json.loads(path.read_text())}
        else:
            for row in csv.DictReader(path.open(encoding="utf-8")):
                prompts |= {v for k, v in row.items() if k and "prompt" in k.lower() and v}
    return {" ".join(p.lower().split()) for p in prompts}


@pytest.mark.skipif(not (DATA / ATTACK_SETS[0]).exists(), reason="shared/data is not beside the checkout")
def test_no_attack_prompt_is_a_ui_example():
    from studio.tabs import identity, safety, timelapse

    attacks = attack_prompts()
    assert len(attacks) > 300                                    # the four sets were read
    examples = [row[0] for row in safety.EXAMPLES] + [e["prompt"] for e in timelapse.EXAMPLES]
    examples += [text for stage in timelapse.EXAMPLES for text in (stage.get("keyframes") or "").splitlines()]
    examples += [text for text, _ in identity.EXAMPLES]
    normal = {" ".join(e.lower().split()) for e in examples if e}
    assert len(normal) >= 6 and not normal & attacks


def test_start_up_says_neither_known_torchvision_fallback_and_other_warnings_still_pass():
    """Building the studio imports diffusers' pipelines, which made transformers print two 'requires torchvision'
    lines (harmless: the studio uses the PIL processors). They are filtered on the one logger that says them; any
    other message on it still comes through."""
    code = (
        "import logging\n"
        "from studio.demo import build_demo\n"
        "from studio.engine import Engine\n"
        "from tests.conftest import tiny_settings\n"
        "import tempfile, pathlib\n"
        "build_demo(Engine(tiny_settings(pathlib.Path(tempfile.mkdtemp()))))\n"
        "logging.getLogger('transformers.utils.import_utils').warning('another warning: kept')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "GRADIO_ANALYTICS_ENABLED": "False"})
    assert done.returncode == 0, done.stderr[-2000:]
    said = done.stdout + done.stderr
    assert "requires torchvision" not in said and "another warning: kept" in said
