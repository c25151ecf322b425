"""APOLLO (Zhu et al., MLSys 2025) through apollo-torch: full-rank weights, the raw gradient scaled
channel- or tensor-wise by norms estimated from AdamW moments of a rank-r random projection."""

from ftbench.methods import register
from ftbench.methods.apollo.config import ApolloConfig

register("apollo", ApolloConfig, "ftbench.methods.apollo.method:Apollo")
