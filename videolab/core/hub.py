"""The Hugging Face Hub from here: is it reachable, is offline mode on, and the banner that says when a default
had to be replaced offline (random weights, a smaller pretrained model)."""
from __future__ import annotations

import functools
import os
import socket
import sys


def hub_offline_mode() -> bool:
    """HF_HUB_OFFLINE is set: the Hub client reads its local cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or huggingface.co cannot be reached (one quick connection attempt), so an
    offline machine does not sit through the Hub client's retries for every file."""
    if hub_offline_mode():
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def loud_note(message: str) -> None:
    """A warning nobody can miss (printed as a banner on stderr)."""
    bar = "!" * 100
    print(f"\n{bar}\n!! {message}\n{bar}\n", file=sys.stderr, flush=True)


def quiet_note(message: str) -> None:
    """The ``announce`` of a build that should say nothing (rebuilding a checkpoint, non-main processes)."""


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".pth.tar", ".npz")


def looks_like_path(value: str) -> bool:
    """A value meant as a local folder, not a Hub id: it starts with ``.``, ``/`` or ``~``, or its first part
    exists here (``my_runs/backbone`` beside an existing ``my_runs/``)."""
    first = value.replace("\\", "/").split("/")[0]
    return value.startswith((".", "/", "~")) or os.path.exists(value) or (first != value and os.path.exists(first))


def is_loadable_folder(path: str) -> bool:
    """A folder that holds a model: a config.json, or a weights file (safetensors, bin, pth ...)."""
    if not os.path.isdir(path):
        return False
    return any(name == "config.json" or name.endswith(WEIGHT_SUFFIXES) for name in os.listdir(path))


def check_weights_path(flag: str, value: str) -> None:
    """``--pretrained`` / ``--language_model`` given as a path must be a folder that holds a model: otherwise the
    run would train from random weights, its banner blaming the network. Only a Hub-style id (``org/name``) may fall
    back offline. Raises videolab.core.errors.UsageError."""
    from videolab.core.errors import UsageError
    if not value or not looks_like_path(value):
        return
    path = os.path.expanduser(value)
    if not os.path.exists(path):
        raise UsageError(f"--{flag} {value!r} looks like a local path but does not exist; pass the folder that "
                         f"holds the weights (config.json / *.safetensors), or a Hub id such as org/name")
    if not is_loadable_folder(path):
        what = "a file" if os.path.isfile(path) else "a folder without config.json or a weights file"
        raise UsageError(f"--{flag} {value!r} is {what}; pass a folder that holds the weights (config.json / "
                         f"*.safetensors, e.g. an export or a --task pretrain backbone folder), or a Hub id")
