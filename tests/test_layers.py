"""House rules a reader relies on: `pipelines/` works without Gradio, and no attack prompt is ever a UI example."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

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
