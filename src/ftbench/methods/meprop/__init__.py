"""MeProp as the SparseGrad paper's baseline: the top-k of the weight gradient in the original basis."""

from ftbench.methods import register
from ftbench.methods.meprop.config import MePropConfig

register("meprop", MePropConfig, "ftbench.methods.meprop.method:MeProp")
