"""The errors a run turns into one line and an exit code (``videolab.cli.run_cli``); anything else is a bug and
keeps its traceback.

=================  =====  ==========================================================================
error              exit   meaning
=================  =====  ==========================================================================
UsageError         2      a flag, file, path or combination the user can fix; the message says how
RunError           1      the run stopped on purpose (a non-finite loss) and says why and what to do
OSError ENOSPC     1      the disk is full (``run_cli`` prints it as one line; every file written before is whole)
IncompleteResult   3      the run finished and wrote its outputs, but some inputs could not be used
=================  =====  ==========================================================================
"""
from __future__ import annotations

from typing import Any


class UsageError(Exception):
    """A mistake by the user (flag, YAML, value, combination, input file). Printed as one line; exit code 2."""


class RunError(Exception):
    """A run that stopped on purpose (e.g. a non-finite loss) and says why and what to do. One line; exit code 1."""


class IncompleteResult(Exception):
    """The run finished and wrote its outputs, but some inputs could not be used (the outputs list them).
    Printed as one line; exit code 3. ``result`` is what the run returned."""
    exit_code = 3

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


class CheckpointError(UsageError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe, or incompatible. One line, exit code 2."""
