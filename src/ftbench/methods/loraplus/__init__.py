"""LoRA+ (Hayou et al., ICML 2024) through PEFT: LoRA with a larger learning rate for B than for A."""

from ftbench.methods import register
from ftbench.methods.loraplus.config import LoraPlusConfig

register("loraplus", LoraPlusConfig, "ftbench.methods.loraplus.method:LoraPlus")
