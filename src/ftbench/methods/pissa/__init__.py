"""PiSSA (Meng et al., NeurIPS 2024) through PEFT: LoRA adapters started from the principal singular
components of each weight, the residual left frozen."""

from ftbench.methods import register
from ftbench.methods.pissa.config import PissaConfig

register("pissa", PissaConfig, "ftbench.methods.pissa.method:Pissa")
