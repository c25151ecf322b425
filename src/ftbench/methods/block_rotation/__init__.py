"""HiFT (Liu et al., 2024) as one block-rotating strategy, and BAdam and LISA as its configurations
(units.py: the units and their order; state_store.py: where a leaving unit's optimizer state goes)."""

from ftbench.methods import register
from ftbench.methods.block_rotation.config import BadamConfig, HiftConfig, LisaConfig

register("hift", HiftConfig, "ftbench.methods.block_rotation.method:BlockRotation")
register("badam", BadamConfig, "ftbench.methods.block_rotation.method:BlockRotation")
register("lisa", LisaConfig, "ftbench.methods.block_rotation.method:BlockRotation")
