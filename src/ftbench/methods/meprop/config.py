"""MeProp's schema (torch-free): SparseGrad's settings without the calibration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftbench.methods.config import GpuTarget
from ftbench.methods.sparsegrad.config import SparseMlpConfig


@dataclass
class MePropConfig(SparseMlpConfig):
    name: str = "meprop"
    gpu_targets: ClassVar[dict[str, GpuTarget]] = {  # the RoBERTa-large table (traced MiB), as a ratio to full;
        # the 7B step at most 1.05 x full fine-tuning's (issue 28)
        "llama2-7b": GpuTarget(max_time_ratio=1.05),
        "roberta-large": GpuTarget("2588 MiB (0.890 of full)", max_ratio=2588 / 2908 + 0.05)}
