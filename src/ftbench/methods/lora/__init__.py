"""LoRA (Hu et al., 2022) through PEFT: low-rank adapters on the target linears."""

from ftbench.methods import register
from ftbench.methods.lora.config import LoraMethodConfig

register("lora", LoraMethodConfig, "ftbench.methods.lora.method:Lora")
