"""MeProp as the SparseGrad paper's baseline: the top-k of |∂L/∂W| in the original
basis, per layer per step, on the same MLP weights, with the same lazy Adam and the
same protocol options as SparseGrad (sparsegrad.py), and no calibration.

This is not Sun et al.'s meProp (top-k of the output gradient). The reference's
version returned a dense gradient with zeros to a dense AdamW, so momentum kept
moving entries outside the mask; here the moments move only at the selected
entries, as for SparseGrad, so the two differ by the rotation alone.
"""

from __future__ import annotations

from torch import nn

from ftbench.methods.base import MethodContext
from ftbench.methods.meprop.config import MePropConfig
from ftbench.methods.sparsegrad.method import SparseMlpMethod


class MeProp(SparseMlpMethod):
    config_class = MePropConfig

    def bases(self, model: nn.Module, layers: dict[str, list[nn.Linear]], ctx: MethodContext) -> dict[str, None]:
        return {kind: None for kind in layers}
