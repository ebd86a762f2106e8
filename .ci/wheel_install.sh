#!/usr/bin/env bash
# CI: build the wheel, install it (not editable) into a fresh venv outside the checkout,
# and run what a cluster user runs first there: `hpcxtal init`, `hpcxtal site check` for
# every shipped site and `hpcxtal submit --dry-run` on every batch site. Catches package
# data missing from the wheel and paths that only resolve inside a checkout.
# Fast enough for every CI run: torch==2.13.0 goes in first (the CPU build; an unpinned
# torch pulls a multi-GB CUDA one) and pip's wheel cache is kept between runs.
set -euo pipefail
shopt -s nullglob
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hpcxtal-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

"$PYTHON" -m venv "$WORK/venv"
BIN=$WORK/venv/bin
"$BIN/pip" install --quiet torch==2.13.0
"$BIN/pip" wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$REPO"
"$BIN/pip" install --quiet "$WORK"/dist/hpcxtal-*.whl
installed=$(date +%s)

mkdir "$WORK/run"
cd "$WORK/run"          # outside the checkout: nothing may be found through it
unset PYTHONPATH HPCXTAL_SITE_DIR
"$BIN/python" - "$REPO" <<'PY'
import sys, hpcxtal
assert not hpcxtal.__file__.startswith(sys.argv[1]), f"imported from the checkout: {hpcxtal.__file__}"
PY
"$BIN/hpcxtal" init camp -q
sites=$("$BIN/python" -c "from hpcxtal.hpc.site import shipped_sites; print(*shipped_sites())")
for site in $sites; do
    "$BIN/hpcxtal" site check "$site" > "site-check-$site.txt"
    scheduler=$("$BIN/python" -c "from hpcxtal.hpc.site import load_site; print(load_site('$site').scheduler)")
    if [ "$scheduler" != local ]; then
        rm -rf camp/jobs
        "$BIN/hpcxtal" submit camp --site "$site" --dry-run -q
        scripts=(camp/jobs/*.sbatch camp/jobs/*.pbs)
        if [ ${#scripts[@]} -eq 0 ]; then
            echo "submit --dry-run on $site wrote no batch script" >&2
            exit 1
        fi
        for script in "${scripts[@]}"; do bash -n "$script"; done
    fi
done
echo "wheel install check: $(echo $sites | wc -w) sites; install $((installed - start)) s," \
     "checks $(( $(date +%s) - installed )) s"
