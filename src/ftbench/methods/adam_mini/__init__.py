"""Adam-mini (Zhang et al., ICLR 2025) through the adam-mini package: AdamW's first moment, but one
second moment per block of the Hessian's structure (a head, a neuron, a token) instead of one per
weight; the blocks come from models/architecture.py."""

from ftbench.methods import register
from ftbench.methods.adam_mini.config import AdamMiniConfig

register("adam-mini", AdamMiniConfig, "ftbench.methods.adam_mini.method:AdamMini")
