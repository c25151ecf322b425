"""QLoRA (Dettmers et al., NeurIPS 2023): LoRA adapters (PEFT) over a base whose block projections are
held in 4-bit NormalFloat by bitsandbytes."""

from ftbench.methods import register
from ftbench.methods.qlora.config import QloraConfig

register("qlora", QloraConfig, "ftbench.methods.qlora.method:Qlora")
