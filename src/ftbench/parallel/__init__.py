"""Several processes: data parallel gradient sums for every method (`distributed`) and FSDP2
sharding for the methods whose trainable part is whole parameters (`sharding`).

May import: `ftbench.models`, `ftbench.measure` and below.
"""
