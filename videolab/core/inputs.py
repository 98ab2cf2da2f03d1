"""Files from outside read with limits: settings and model YAML, JSON of checkpoints and data folders.

Every reader here turns what a hostile or damaged file can do into one UsageError line naming the file: a file
over :data:`MAX_FILE_BYTES`, bytes that are not UTF-8, YAML that is not valid, YAML aliases beyond
:data:`MAX_ALIASES` (a "billion laughs" file of a few hundred bytes would otherwise expand into gigabytes), a top
level of the wrong type. Messages quote at most :data:`QUOTE_CHARS` characters of a value (:func:`quote`), so an
expanded value never floods the terminal. YAML is read with a ``yaml.SafeLoader`` subclass: no Python object is
ever constructed from a tag.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import yaml

from videolab.core.errors import UsageError

MAX_FILE_BYTES = 4 * 1024 * 1024  # settings, model sections, run_config.json, labels.json: far below this
MAX_ALIASES = 100  # alias uses per YAML document (config_file.yaml uses none)
MAX_VALUES = 100_000  # values (scalars, lists, mappings) of a document once its aliases are expanded
QUOTE_CHARS = 80


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters (``...`` and the full length when cut)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document using more than :data:`MAX_ALIASES` aliases."""

    def __init__(self, stream):
        super().__init__(stream)
        self.alias_uses = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.alias_uses += 1
            if self.alias_uses > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name): refused, an alias bomb expands "
                                     f"without limit")
        return super().compose_node(parent, index)


def read_text(path: str, what: str, fix: str) -> str:
    """The UTF-8 text of ``path``; one line (naming ``what`` and the ``fix``) when it is missing, not a file, too
    large or not UTF-8."""
    if not os.path.exists(path):
        raise UsageError(f"{what} {path!r} not found; {fix}")
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path!r} is not a file; {fix}")
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise UsageError(f"{what} {path!r} is {size:,} bytes, over the limit of {MAX_FILE_BYTES:,}; {fix}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{what} {path!r} cannot be read ({exc.strerror}); {fix}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path!r} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
                         ) from None


def parse_yaml(text: str, what: str) -> Any:
    """YAML text -> plain data (safe, alias-limited); one line naming ``what`` when it is not valid."""
    if len(text) > MAX_FILE_BYTES:
        raise UsageError(f"{what} is {len(text):,} characters, over the limit of {MAX_FILE_BYTES:,}")
    try:
        data = yaml.load(text, Loader=LimitedLoader)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{what} is not valid YAML: {first[:160]}") from None
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply to be settings") from None
    check_expanded_size(data, what)
    return data


def check_expanded_size(data: Any, what: str) -> None:
    """Refuse data that expands to more than MAX_VALUES values or refers to itself (YAML ``&a [*a]``). Shared
    sub-values (aliases) are counted once per use but measured once, so the check itself costs little."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()

    def size(value: Any) -> int:
        if isinstance(value, (bytes, set, frozenset)):  # YAML !!binary, !!set: never a setting
            raise UsageError(f"{what} holds a {type(value).__name__} value ({quote(value, 40)}); settings are "
                             f"text, numbers, lists and mappings")
        if not isinstance(value, (list, dict)):
            return 1
        if isinstance(value, dict):
            odd = next((k for k in value if not isinstance(k, (str, int, float, bool, type(None)))), None)
            if odd is not None:
                raise UsageError(f"{what} has a key that is a {type(odd).__name__} ({quote(odd, 40)}); write keys "
                                 f"as plain text")
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in open_ids:
            raise UsageError(f"{what} refers to itself (a recursive alias); write the values out")
        open_ids.add(key)
        children = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_VALUES:
                raise UsageError(f"{what} expands to more than {MAX_VALUES:,} values (aliases repeat their anchor's "
                                 f"whole value); refused")
        open_ids.discard(key)
        sizes[key] = total
        return total

    try:
        size(data)
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply to be settings") from None


def read_yaml(path: str, what: str, fix: str, expect: Optional[type] = dict) -> Any:
    """A YAML file (empty = ``{}``) that must hold ``expect`` at its top level."""
    data = parse_yaml(read_text(path, what, fix), f"{what} {path!r}")
    data = {} if data is None and expect is dict else data
    if expect is not None and not isinstance(data, expect):
        kind = {dict: "mapping", list: "list"}.get(expect, expect.__name__)
        raise UsageError(f"{what} {path!r} must hold a {kind} at its top level, got "
                         f"{type(data).__name__} {quote(data, 40)}; {fix}")
    return data


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply") from None


def read_json(path: str, what: str, fix: str, expect: Optional[type] = dict) -> Any:
    """A JSON file that must hold ``expect`` at its top level; one line naming it otherwise."""
    data = parse_json(read_text(path, what, fix), f"{what} {path!r}")
    if expect is not None and not isinstance(data, expect):
        raise UsageError(f"{what} {path!r} must hold a JSON {'object' if expect is dict else expect.__name__} at "
                         f"its top level, got {type(data).__name__}; {fix}")
    return data


# ----------------------------------------------------------------------------------------------------------------
# folders that hold data, never code
# ----------------------------------------------------------------------------------------------------------------
_DATA_FOLDERS: list[str] = []  # real paths; set by videolab.cli.resolve from the settings of the command


def set_data_folders(folders) -> None:
    """The folders whose files are data to this command (--output_dir, --data_root, --checkpoint, --video_dir,
    --cache_dir, --export_dir): nothing inside them is ever imported as code (``check_not_data``)."""
    _DATA_FOLDERS[:] = sorted({os.path.realpath(os.path.expanduser(f)) for f in folders if f})


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved: links followed)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_not_data(path: str, what: str) -> None:
    """Refuse to import ``path`` (a module file or package folder) that lies in a data folder of this command."""
    for folder in _DATA_FOLDERS:
        if inside(path, folder):
            raise UsageError(f"{what} is refused: its code {path} lies inside {folder}, a checkpoint or data folder; "
                             f"files there are data and are never imported. Install the module as a package instead")
