"""HiFT (Liu et al., 2024) as one block-rotating strategy, and BAdam and LISA as its configurations
(units.py: the units and their order; state_store.py: where a leaving unit's optimizer state goes)."""

from ftbench.methods import register
from ftbench.methods.block_rotation.config import BlockRotationConfig

for _name in ("hift", "badam", "lisa"):
    register(_name, BlockRotationConfig, "ftbench.methods.block_rotation.method:BlockRotation")
