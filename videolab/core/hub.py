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
