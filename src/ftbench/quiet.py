"""Library chatter (deprecation warnings, init notices, progress bars) kept out of the user's terminal."""

from __future__ import annotations

import logging
import os
import warnings


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
