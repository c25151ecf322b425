"""DoRA (Liu et al., ICML 2024) through PEFT: LoRA's direction update with a trained magnitude per output."""

from ftbench.methods import register
from ftbench.methods.dora.config import DoraConfig

register("dora", DoraConfig, "ftbench.methods.dora.method:Dora")
