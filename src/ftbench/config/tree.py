"""Where the Hydra config tree (conf/) is: the CLI composes from it, and the config check reads the
experiment files a run chose (unused.set_keys)."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """The Hydra tree: inside the package (wheel), else at the top of the checkout (editable)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise SystemExit("ftbench: error: the config tree (conf/config.yaml) is missing; reinstall ftbench")
