"""The relaxation benchmarks' paths that need no torch-sim environment and no GPU: the
torch-sim sides skip with a message that says how to build the side environment, and
the GPU script skips cleanly without CUDA. (Their timings are in BENCHMARKS.md.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

BENCH = REPO / "benchmarks"


def run_script(name: str, *args: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python benchmarks/NAME ARGS`` with the repository importable."""
    return subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_bench_relax_skips_torchsim_sides_without_their_environment(tmp_path):
    out = tmp_path / "relax.json"
    done = run_script("bench_relax.py", "--backend", "mace", "--max-atoms", "8", "--limit", "1",
                      "--runs", "1", "--skip-rank", "--sides", "lbfgs,ts-fire,ts-lbfgs",
                      "--torchsim-python", str(tmp_path / "no-venv" / "python"),
                      "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "torch-sim sides skipped" in done.stderr
    report = json.loads(out.read_text())
    assert "make_torchsim_venv.sh" in report["torchsim_skipped"]
    assert report["lbfgs"]["converged"] == 1  # our side still ran
    assert "ts-fire" not in report and "ts-lbfgs" not in report


def test_torchsim_probe_names_what_the_interpreter_lacks():
    sys.path.insert(0, str(BENCH))
    try:
        from bench_relax import torchsim_missing
    finally:
        sys.path.remove(str(BENCH))
    # hpcxtal's own interpreter (Python 3.11) has mace but no torch_sim
    why = torchsim_missing(sys.executable)
    assert why is not None and "cannot import" in why and "make_torchsim_venv.sh" in why


def test_gpu_relax_skips_cleanly_without_cuda(tmp_path):
    out = tmp_path / "gpu.json"
    done = run_script("gpu_relax.py", "--json", str(out), env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert "no CUDA device: skipped" in done.stderr
    assert json.loads(out.read_text())["skipped"] == "no CUDA device"
