"""SparseGrad (Chekalina et al., EMNLP 2024): top-k MLP updates in a calibrated rotated basis (rotations.py, sparse_linear.py, sparse_adam.py)."""

from ftbench.methods import register
from ftbench.methods.sparsegrad.config import SparseGradConfig

register("sparsegrad", SparseGradConfig, "ftbench.methods.sparsegrad.method:SparseGrad")
