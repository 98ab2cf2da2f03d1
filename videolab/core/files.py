"""Every file and folder the repo writes goes through here: a unique temporary name beside the target, fsync, then
an atomic rename (``os.replace``), so a crash or ``kill -9`` leaves either the old file or the new one, never half
of one, and two writers never share a temporary name.

Written files get the permissions of an ordinary new file (``0o666`` minus the umask), not the owner-only mode of
``tempfile``'s temporary files.

    write_json(path, data)                    # eval.json, predictions.json, ...
    write_text(path, text)
    with atomic_file(path) as tmp:            # for a library that writes to a path (torch.save, savefig, np.save)
        torch.save(tensor, tmp)
    with atomic_folder(folder) as tmp:        # a folder written whole (checkpoints, exports)
        model.save_pretrained(tmp)
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

TEMP_MARK = ".tmp"  # temporary names are ".<name>.tmp<random>" beside the target (remove_stale_temp finds them)


def default_mode(folder: bool = False) -> int:
    """The mode a new file (0o666) or folder (0o777) gets under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str) -> None:
    """Flush every file under ``folder`` (and the folders themselves) to disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(root)


def _parent(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return parent


@contextlib.contextmanager
def atomic_file(path: str, keep_extension: bool = False) -> Iterator[str]:
    """A temporary path beside ``path``; after the block it is fsynced and renamed onto ``path``. On an error the
    temporary file is removed and ``path`` is left as it was. ``keep_extension``: the temporary name ends with
    ``path``'s extension (for writers that pick the format from it, such as PyAV and matplotlib)."""
    parent = _parent(path)
    suffix = os.path.splitext(path)[1] if keep_extension else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{TEMP_MARK}", suffix=suffix, dir=parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
        fsync_dir(parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes(path: str, data: bytes) -> str:
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


def write_text(path: str, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str, data: Any, indent: int = 2) -> str:
    """``data`` as JSON (values JSON does not know are written as ``str``); non-finite floats are written as
    ``null``, so the file is valid JSON for every reader."""
    return write_text(path, json.dumps(_finite(data), indent=indent, default=str, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    """NaN / inf -> None, recursively (JSON has no such numbers)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def new_temp_folder(folder: str) -> str:
    """An empty ``.<name>.tmp*`` folder beside ``folder`` (same file system, so the final rename is atomic), with
    the permissions of an ordinary new folder."""
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.normpath(folder))}{TEMP_MARK}", dir=_parent(folder))
    os.chmod(tmp, default_mode(folder=True))
    return tmp


def ordinary_permissions(folder: str) -> None:
    """Every file and folder under ``folder`` gets the mode of an ordinary new one (libraries such as safetensors
    create their files owner-only)."""
    file_mode, folder_mode = default_mode(), default_mode(folder=True)
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, file_mode)
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), folder_mode)


def commit_folder(tmp: str, folder: str) -> str:
    """fsync ``tmp`` and rename it to ``folder``; an existing ``folder`` is replaced (moved aside, then removed).
    Its files get ordinary permissions (``ordinary_permissions``)."""
    ordinary_permissions(tmp)
    fsync_tree(tmp)
    old = None
    if os.path.lexists(folder):
        old = f"{tmp}.old"
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_dir(os.path.dirname(os.path.abspath(folder)))
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return folder


@contextlib.contextmanager
def atomic_folder(folder: str) -> Iterator[str]:
    """A temporary folder beside ``folder``; after the block it replaces ``folder`` whole. On an error it is
    removed and ``folder`` is left as it was."""
    tmp = new_temp_folder(folder)
    try:
        yield tmp
        commit_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temp(folder: str) -> None:
    """Temporary files and folders left in ``folder`` by a write that was killed (they start with a dot)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(".") and TEMP_MARK in name:
            path = os.path.join(folder, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) and not os.path.islink(path) else \
                os.remove(path)


# ----------------------------------------------------------------------------------------------------------------
# output paths, checked before any long work
# ----------------------------------------------------------------------------------------------------------------
def _existing_ancestor(path: str) -> str:
    """``path`` itself if it exists, else its nearest existing parent (the folder the writes would be created in)."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        current = os.path.dirname(current)
    return current


def _writable(path: str) -> bool:
    """Writable by us and not marked read-only (a file or folder whose write bits are all off is respected even
    by root, who os.access says may write anywhere)."""
    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & 0o222)


def check_output_file(path: str, flag: str, overwrite: bool = True) -> None:
    """A file the command will write: not a folder, not read-only, inside a folder that exists or can be created
    (no file where a folder belongs); with ``overwrite`` False, it must not exist yet. UsageError naming ``flag``."""
    from videolab.core.errors import UsageError
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a folder; pass a file path (e.g. {os.path.join(path, 'out.json')})")
    if os.path.lexists(path):
        if not overwrite:
            raise UsageError(f"{flag} {path!r} exists and is not replaced silently; pass another {flag} or "
                             f"--overwrite True to replace it")
        if not _writable(path):
            raise UsageError(f"{flag} {path!r} is read-only; pass another {flag} or make it writable")
        return
    _check_creatable(os.path.dirname(os.path.abspath(path)), flag, path)


def check_output_folder(path: str, flag: str) -> None:
    """A folder the command will write into: not a file, writable, or creatable inside a writable folder."""
    from videolab.core.errors import UsageError
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a file, not a folder; pass a folder path")
    _check_creatable(path, flag, path)


def _check_creatable(folder: str, flag: str, path: str) -> None:
    from videolab.core.errors import UsageError
    base = _existing_ancestor(folder)
    if not os.path.isdir(base):
        raise UsageError(f"{flag} {path!r} cannot be written: {base} is a file where a folder belongs; pass another "
                         f"{flag}")
    if not _writable(base):
        raise UsageError(f"{flag} {path!r} cannot be written: the folder {base} is read-only; pass another {flag}")
