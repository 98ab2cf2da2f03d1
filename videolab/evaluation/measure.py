"""Timing and memory measurements, shared by the run reports (reports.py) and the benchmark scripts."""
from __future__ import annotations

import json
import os
import resource
import statistics
import time

from videolab.core.files import write_json


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn()`` (seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def vm_hwm_bytes() -> int:
    """Peak resident memory since the last ``reset_peak_rss()`` (Linux), else since process start."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def append_results(path: str, rows: list) -> None:
    """Add a benchmark's result rows to the JSON list in ``path`` (created if missing), so several invocations
    (other runs, other seeds) collect in one file."""
    previous = json.load(open(path)) if os.path.isfile(path) else []
    write_json(path, previous + rows)


def run_and_record(runs: str, run_one, json_path: "str | None", results: "list | None" = None) -> list:
    """A benchmark's driver loop: ``run_one(name) -> dict`` for each name of the comma-separated ``runs``, each
    result printed as a JSON line as it comes, all of them (after ``results``) appended to ``json_path``."""
    results = list(results or [])
    for name in [r.strip() for r in runs.split(",") if r.strip()]:
        results.append(run_one(name))
        print(json.dumps(results[-1]), flush=True)
    if json_path:
        append_results(json_path, results)
    return results
