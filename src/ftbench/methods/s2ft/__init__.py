"""S2FT (Yang et al., NeurIPS 2024): whole attention heads and FFN channels train (select.py: which; adapter.py: the delta)."""

from ftbench.methods import register
from ftbench.methods.s2ft.config import S2ftConfig

register("s2ft", S2ftConfig, "ftbench.methods.s2ft.method:S2ft")
