"""What every relaxation benchmark records about the run: the machine line and the
report file (with the load average at the end, to show the machine was quiet)."""
from __future__ import annotations

import json
import os
import platform

import torch


def machine(threads: int) -> str:
    """CPU, core count, torch version and torch threads, for the report."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {threads} torch thread(s)")


def finish(report: dict, path: str | None) -> None:
    """Print the report (with the load average now) and write it to ``path`` if given."""
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
