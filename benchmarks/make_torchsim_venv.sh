#!/usr/bin/env bash
# Build the side virtual environment in which bench_relax.py runs torch-sim's optimisers
# (benchmarks/torchsim_relax.py). torch-sim's current releases need Python >= 3.12 and
# hpcxtal's own environment is 3.11, so it lives apart, outside the repository; it is
# never a dependency of hpcxtal or its tests.
#
#   bash benchmarks/make_torchsim_venv.sh [VENV]        # default /work/venv-ts312
#
# PYTHON312 names the interpreter (default: pyenv's newest 3.12). torch is pinned to
# hpcxtal's version and installed first; where only PyPI is reachable that is the CUDA
# build (about 1.4 GB of downloads; it runs on the CPU). mace-torch is pinned to
# hpcxtal's version so that both sides load the same shipped model file.
set -euo pipefail
venv=${1:-/work/venv-ts312}
if [[ -z ${PYTHON312:-} ]]; then
    PYTHON312=$(ls -d "$(pyenv root)"/versions/3.12*/bin/python 2>/dev/null | sort -V | tail -1)
fi
[[ -x ${PYTHON312:-} ]] || { echo "no Python 3.12 found; set PYTHON312" >&2; exit 1; }
"$PYTHON312" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q)
"${pip[@]}" torch==2.13.0
"${pip[@]}" torch-sim-atomistic==0.6.2 "vesin[torch]" mace-torch==0.3.16 ase
"$venv/bin/python" - <<'EOF'
import mace.modules, torch_sim, vesin  # noqa: F401  (mace before e3nn)
from importlib.metadata import version
print({p: version(p) for p in ("torch-sim-atomistic", "torch", "mace-torch", "e3nn", "vesin", "ase")})
EOF
