"""The training engine every method shares: the loop (`loop`), the loss (`loss`), micro-batch
streams (`batches`), optimizers and LR schedules (`optim`), the device and precision (`hardware`),
metric loggers (`loggers`) and how a job that stopped on an exception ends (`outcome`). It never asks
which method or task runs: methods plug in through their hooks, tasks through their collators.

May import: `ftbench.parallel`, `ftbench.models`, `ftbench.measure` and below.
"""
