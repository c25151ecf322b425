"""QLoRA's schema (torch-free): LoRA's knobs and the 4-bit storage of the base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftbench.errors import require
from ftbench.methods.config import GpuTarget, Variant
from ftbench.methods.lora.config import LoraMethodConfig

QUANT_TYPES = ("nf4", "fp4")  # bitsandbytes' 4-bit data types: NormalFloat (QLoRA §3) | plain 4-bit float
BLOCK_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes' 4-bit quantization accepts on every device


@dataclass
class QloraConfig(LoraMethodConfig):
    name: str = "qlora"
    lr: float = 1e-3
    quant_type: str = "nf4"
    double_quant: bool = True
    block_size: int = 64
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"quant_type": QUANT_TYPES}
    fsdp_refusal: ClassVar[str | None] = "its 4-bit base weights are packed uint8 tensors with their quantization " \
                                         "state beside them, which FSDP's flat parameters do not carry"
    gpu_targets: ClassVar[dict[str, GpuTarget]] = {"llama2-7b": GpuTarget()}
    # the QLoRA recipe's 8-bit optimizer states (bitsandbytes' AdamW8bit: uint8 moments of the adapters)
    variants: ClassVar[dict[str, Variant]] = {"8-bit AdamW": Variant(("optim.name=adamw8bit",))}

    def check(self, key: str) -> None:
        super().check(key)
        require(self.block_size in BLOCK_SIZES, f"{key}.block_size",
                f"must be one of {', '.join(map(str, BLOCK_SIZES))} (weights per absmax)")
