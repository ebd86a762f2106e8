"""Kill -9 a tiny campaign at each kill point, once per seed, in a fresh campaign each
time, resume it, and compare its database with an uninterrupted run (outside CI).

The CI test (tests/test_faults.py) kills one campaign at every point in turn; this
script kills each point on its own, so that every resume starts from one crash.

    python benchmarks/fault_campaign.py --seeds 5 --json benchmarks/results/faults.json
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_faults import (KILL_POINTS, assert_same_database, init_campaign, kill_at,  # noqa: E402
                         run_to_end)
from test_relax import tiny_mace  # noqa: E402


def one_case(folder: Path, model: Path, reference: Path, point_index: int,
             seed: int) -> dict[str, object]:
    """Run a fresh campaign to the kill point, kill it, resume, compare; what happened."""
    camp = init_campaign(folder, model)
    rng = random.Random(seed)
    started = time.monotonic()
    case: dict[str, object] = {"seed": seed, "point": KILL_POINTS[point_index].name}
    try:
        # The kill points before this one are passed through without killing.
        case.update(kill_at(camp, "run", KILL_POINTS[point_index], rng))
        run_to_end(camp)
        assert_same_database(camp / "database.h5", reference / "database.h5")
        case["result"] = "pass"
    except BaseException as err:  # pytest.fail raises a BaseException
        case["result"] = "fail"
        case["error"] = "".join(traceback.format_exception_only(err)).strip()[-2000:]
    case["wall_s"] = round(time.monotonic() - started, 1)
    return case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per kill point")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the cases here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpcxtal-faults-") as tmp:
        tmp = Path(tmp)
        model = tiny_mace(tmp / "tiny.model")
        (tmp / "reference").mkdir()
        reference = init_campaign(tmp / "reference", model)
        started = time.monotonic()
        run_to_end(reference, "run")
        reference_s = time.monotonic() - started
        cases = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for k in range(len(KILL_POINTS)):
                folder = tmp / f"seed{seed}-point{k}"
                folder.mkdir()
                cases.append(one_case(folder, model, reference, k, seed))
                print(json.dumps(cases[-1]), flush=True)
    passed = sum(c["result"] == "pass" for c in cases)
    print(f"{passed}/{len(cases)} cases passed; uninterrupted run {reference_s:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": platform.platform(), "cases": cases,
                                         "uninterrupted_s": round(reference_s, 1)}, indent=1))
    return 0 if passed == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
