"""Every bench script runs at its smallest size and prints the figures it promises, so none can rot unseen.

The README's figures come from bench/; a script nothing runs breaks quietly (bench/startup.py did, when /system
gained an output). Each script declares its smoke run (tests/bench_smoke.py says how); this walks the folder, so a
bench added without one fails here. What the figures are is not checked: timing belongs in the benches.
"""

from __future__ import annotations

import re

import pytest

from tests.bench_smoke import declared, scripts, smoke, start

NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
NAMES = [p.name for p in scripts()]


@pytest.fixture(scope="module", autouse=True)
def all_started():
    start([p.name for p in scripts() if {"SMOKE_ARGS", "FIGURES"} <= set(declared(p))])


def test_the_walk_finds_the_benches_and_skips_the_helpers():
    assert {"overhead.py", "startup.py", "soak.py", "tour.py", "gpu.py"} <= set(NAMES)
    assert "_harness.py" not in NAMES and len(NAMES) >= 12


@pytest.mark.parametrize("name", NAMES)
def test_each_bench_declares_its_smoke_run(name):
    found = declared(scripts()[NAMES.index(name)])
    assert {"SMOKE_ARGS", "FIGURES"} <= set(found), (
        f"bench/{name} declares no smoke run: add module-level SMOKE_ARGS = [the smallest settings] and "
        "FIGURES = (the `name: value` lines it prints), see tests/bench_smoke.py")
    assert isinstance(found["SMOKE_ARGS"], list) and all(isinstance(a, str) for a in found["SMOKE_ARGS"])
    figures = found["FIGURES"]
    assert isinstance(figures, tuple) and figures and all(re.fullmatch(r"[a-z][a-z0-9_]*", f) for f in figures)


@pytest.mark.parametrize("name", NAMES)
def test_each_bench_exits_0_at_smoke_size_printing_every_figure_with_a_number(name):
    figures = declared(scripts()[NAMES.index(name)]).get("FIGURES")
    if figures is None:
        pytest.fail(f"bench/{name} declares no smoke run (see test_each_bench_declares_its_smoke_run)")
    run = smoke(name)
    tail = f"\n--- stdout:\n{run.stdout[-2500:]}\n--- stderr:\n{run.stderr[-2500:]}"
    assert run.returncode == 0, f"bench/{name} {' '.join(run.args)} exited {run.returncode}{tail}"
    for figure in figures:
        lines = [line for line in run.stdout.splitlines() if line.startswith(f"{figure}:")]
        assert len(lines) == 1, f"bench/{name}: expected one `{figure}: <number>` line, got {lines}{tail}"
        assert re.fullmatch(rf"{figure}: {NUMBER}(\s+#.*)?", lines[0]), f"bench/{name}: {lines[0]!r} has no number"
    assert not run.temp_left, f"bench/{name} left files in its temporary folder: {run.temp_left[:10]}"
