"""GaLore (Zhao et al., ICML 2024) through galore-torch: full-rank weights, AdamW moments kept in a
rank-r SVD projection of each block projection's gradient; optionally layer-wise (each weight
stepped in its own backward hook, so no whole-model gradient exists)."""

from ftbench.methods import register
from ftbench.methods.galore.config import GaloreConfig

register("galore", GaloreConfig, "ftbench.methods.galore.method:Galore")
