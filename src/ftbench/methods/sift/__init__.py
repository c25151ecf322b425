"""SIFT (Song et al., ICML 2024): a fixed ~1% of each weight's entries trains (select.py: which)."""

from ftbench.methods import register
from ftbench.methods.sift.config import SiftConfig

register("sift", SiftConfig, "ftbench.methods.sift.method:Sift")
