"""How a job that stopped on an exception ends, a run (result.json) and a plan (plan.json) alike: its status,
one line and exit code (`classify`), and what the user sees (`stopped`): that line on stderr, and with
debug=true the traceback too."""

from __future__ import annotations

import os
import sys
import traceback

import torch

from ftbench.engine.loop import NonFiniteLoss
from ftbench.errors import UserError, exception_line, first_line

# Set by a parent process that prints a refused job's line itself (ftbench compare: one line on its spec's key)
REFUSALS_TO_PARENT = "FTBENCH_REFUSALS_TO_PARENT"


def classify(exc: BaseException) -> tuple[str, str, int]:
    """(status, one-line error, exit code) of a job that stopped with `exc`."""
    if isinstance(exc, UserError):
        return "failed", str(exc), 2
    if isinstance(exc, KeyboardInterrupt):
        return "canceled", str(exc) or "canceled by the user (Ctrl-C)", 130
    if isinstance(exc, NonFiniteLoss):
        return "nan", str(exc), 1
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom", first_line(str(exc)) + " (lower the batch or hardware.max_micro_batch_size)", 1
    return "failed", f"{exception_line(exc)} (debug=true shows the traceback)", 1


def stopped(exc: BaseException, debug: bool) -> tuple[str, str, int]:
    """`classify(exc)`, once its line is printed to stderr (a user error's left to a parent that prints it:
    REFUSALS_TO_PARENT) and, with `debug`, the traceback before it (not for Ctrl-C or SIGTERM). Call it in
    the `except` block that caught `exc`."""
    status, error, code = classify(exc)
    if debug and not isinstance(exc, KeyboardInterrupt):
        traceback.print_exc()  # debug=true: the traceback too; the exit code stays (2 for a user error)
    if not (code == 2 and os.environ.get(REFUSALS_TO_PARENT)):
        print(f"ftbench: {status}: {error}", file=sys.stderr)
    return status, error, code
