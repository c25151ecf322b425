"""MeProp's schema (torch-free): SparseGrad's settings without the calibration."""

from __future__ import annotations

from dataclasses import dataclass

from ftbench.methods.sparsegrad.config import SparseMlpConfig


@dataclass
class MePropConfig(SparseMlpConfig):
    name: str = "meprop"
