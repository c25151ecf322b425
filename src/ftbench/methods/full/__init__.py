"""Full fine-tuning: every parameter trains, the reference every method is measured against."""

from ftbench.methods import register
from ftbench.methods.full.config import FullConfig

register("full", FullConfig, "ftbench.methods.full.method:FullFineTuning")
