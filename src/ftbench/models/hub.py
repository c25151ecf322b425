"""Talking to the Hugging Face Hub, and saying in one line when it cannot be reached."""

from __future__ import annotations

import os
import socket
from functools import cache
from urllib.parse import urlparse

from ftbench.errors import UserError, exception_line


def offline_mode() -> bool:
    """True when the user asked for offline mode or the hub cannot be reached at all."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    return not _reachable()


@cache
def _reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect, so an offline machine fails in seconds, not after minutes of retries."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_error(key: str, what: str, exc: BaseException, fix: str, local: bool = False) -> UserError:
    """One line for a failed load: the library's reason (its first line), or that the hub is
    unreachable when `what` is not a local folder and the machine is offline."""
    offline = not local and offline_mode()
    reason = "the hub is unreachable (offline?)" if offline else exception_line(exc)[:300]
    return UserError(key, f"could not load {what}: {reason}; {fix}")


def use_cache_only_if_offline() -> bool:
    """When the hub is unreachable, make hub libraries read their caches only (no retries)."""
    if not offline_mode():
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    return True
