"""Freeze tuning (LLaMA-Factory's `finetuning_type: freeze`): only the last N layers and the new task head train."""

from ftbench.methods import register
from ftbench.methods.freeze.config import FreezeConfig

register("freeze", FreezeConfig, "ftbench.methods.freeze.method:Freeze")
