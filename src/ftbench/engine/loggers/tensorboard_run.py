"""TensorBoard: event files through torch's SummaryWriter, one logdir per sweep (or run), one subdir
per job (`method=full`, `method=lora`: TensorBoard's run names, the job folders). Open: tensorboard --logdir <folder>."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftbench import results
from ftbench.engine.loggers.base import NullLogger, Where, figures, flatten, number


class TensorBoardRun(NullLogger):
    """Per-step scalars under their own tags (`train/loss`, `dev/acc`); at the end, result.json's
    figures (memory in bytes, throughput, metrics) as scalars at the last step and beside the flattened
    config in the HParams tab, and result.json as text. Raises OSError when the folder cannot be written."""

    def __init__(self, cfg, at: Where, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        root = Path(cfg.dir).expanduser() if cfg.dir else at.folder / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(root / at.job))
        self.at = at
        self.params = {k: v if number(v) or isinstance(v, (str, bool)) else str(v) for k, v in flatten(config).items()}
        self.last_step = 0

    def log(self, values: dict[str, Any], step: int) -> None:
        for key, value in values.items():
            if number(value):
                self.writer.add_scalar(key, value, step)
        self.last_step = step

    def close(self, status: str) -> None:
        path = self.at.output_dir / results.FILENAME
        result = results.load(path).to_json() if path.is_file() else {}
        found = figures(result)
        step = (result.get("train") or {}).get("steps") or self.last_step
        if found:  # the HParams tab: the config beside the final figures (also written as scalars at `step`)
            self.writer.add_hparams({**self.params, "status": status}, found, run_name=".", global_step=step)
        if result:
            self.writer.add_text(results.FILENAME, "```\n" + json.dumps(result, indent=2) + "\n```", step)
        self.writer.close()

    def keep_report(self, files: dict[str, Path]) -> None:
        """The sweep's comparison table as text and its plot as an image, under `comparison`."""
        import matplotlib.image

        if "markdown" in files:
            self.writer.add_text("comparison", files["markdown"].read_text())
        if "plot" in files:
            self.writer.add_image("comparison", matplotlib.image.imread(files["plot"])[..., :3], dataformats="HWC")
        self.writer.close()
