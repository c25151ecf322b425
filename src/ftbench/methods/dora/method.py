"""DoRA through PEFT (`LoraConfig(use_dora=True)`), never a copy of its algorithm.

DoRA decomposes each adapted weight into a magnitude and a direction (Liu et al., 2024, Eq. 5):
W' = m * (W0 + BA) / ||W0 + BA||_c, with m (one value per output feature, initialised to
||W0||_c, the column-wise norm) trained beside LoRA's B and A. Costs over LoRA: the magnitude
vector (d_out per adapted linear) and, in every forward, the norm of the whole W0 + BA (a d_out x
d_in temporary per layer; PEFT detaches the norm, as the paper's §4.3 does, so it is not kept for
the backward) and a second product with the base weight.
"""

from __future__ import annotations

from typing import Any

from ftbench.methods.dora.config import DoraConfig
from ftbench.methods.lora.method import Lora


class Dora(Lora):
    config_class = DoraConfig

    def adapter_options(self) -> dict[str, Any]:
        return {"use_dora": True}

    def describe(self, model) -> dict:
        return {**super().describe(model), "magnitude": "one trained value per output feature of each adapted linear"}
