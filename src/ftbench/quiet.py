"""Library chatter (deprecation warnings, init notices, progress bars) kept out of the user's terminal, and
the traceback of a reader that stopped reading (`ftbench --help | head`)."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable

PIPE_CLOSED = 141  # the exit code of a process that SIGPIPE ends (128 + 13), as `yes | head` leaves `yes`


def entry_point(main: Callable[..., None]) -> Callable[..., None]:
    """`main` (a console script) ending quietly when the reader of its output closes the pipe
    (`ftbench --help | head -1`): stdout is pointed at /dev/null, so the interpreter's last flush does not
    fail again, and the process exits with PIPE_CLOSED, as a command that SIGPIPE stops."""

    @functools.wraps(main)
    def quiet_main(*args, **kwargs) -> None:
        try:
            main(*args, **kwargs)
            sys.stdout.flush()  # what is still buffered fails here, not in the interpreter's exit
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(PIPE_CLOSED)

    return quiet_main


def quiet_libraries() -> None:
    """Keep library chatter (deprecations, init notices) out of the user's terminal. Imports no
    library: `ftbench --help` and `--cfg job` load neither torch nor transformers (a job quiets
    transformers itself: `quiet_transformers`)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|peft|accelerate)\.")
    logging.getLogger("peft").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU backend's note on an optional kernel package
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # the local store's table creation notices
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on a model passed in memory, on gen_kwargs


def quiet_transformers() -> None:
    """transformers' notices and progress bars off (imports transformers: called where jobs run)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
