"""What a YAML alias bomb costs: the old settings reader (``yaml.safe_load``, then the error message's ``repr`` of
the expanded value, as ``coerce`` printed it) against ``videolab.core.inputs.read_yaml`` (alias- and size-limited).

    python benchmarks/hostile_yaml.py [--levels 5 6 7] [--repeats 5] [--readers old new]

A bomb of L levels has 9 aliases per level (9 ** L values once expanded, a few hundred bytes on disk). The old
reader is measured at small L only (L = 9, the classic "billion laughs", would need gigabytes); the new one refuses
every L at once. Prints one JSON line per (reader, L): median seconds of ``repeats`` runs, the size of the file, the
characters the old message held.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from videolab.core.errors import UsageError  # noqa: E402
from videolab.core.inputs import read_yaml  # noqa: E402


def bomb(levels: int) -> str:
    """``a: &a [x * 9]``, then each level a list of 9 aliases of the one before; ``lr`` takes the last."""
    names = [chr(97 + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['x'] * 9)}]"]
    lines += [f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip(names, names[1:])]
    return "\n".join(lines + [f"lr: *{names[-1]}"]) + "\n"


def old_reader(path: str) -> int:
    """The reader before issue 19: safe_load, then the message coerce() built with {value!r}."""
    with open(path) as fh:
        data = yaml.safe_load(fh)
    return len(f"--lr expects a number, got {data['lr']!r}")


def new_reader(path: str) -> int:
    try:
        read_yaml(path, "config file", "fix it")
    except UsageError as exc:
        return len(str(exc))
    raise AssertionError("the bomb was not refused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[5, 6, 7])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--readers", nargs="+", default=["old", "new"], choices=["old", "new"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for levels in args.levels:
            path = os.path.join(folder, f"bomb{levels}.yaml")
            with open(path, "w") as fh:
                fh.write(bomb(levels))
            for name, reader in (("old", old_reader), ("new", new_reader)):
                if name not in args.readers:
                    continue
                times, message = [], 0
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    message = reader(path)
                    times.append(time.perf_counter() - start)
                print(json.dumps(dict(reader=name, levels=levels, expanded_values=9 ** levels,
                                      file_bytes=os.path.getsize(path), median_s=round(statistics.median(times), 5),
                                      message_chars=message)), flush=True)


if __name__ == "__main__":
    main()
