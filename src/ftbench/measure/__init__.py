"""Measuring honestly: memory in phases with a breakdown read from what the model, autograd and
the optimizer really hold (`meters`), the live-tensor peak on devices without an allocator counter
(`trace`), speed, and where a result was measured (`environment`).

May import: `ftbench.errors`, `ftbench.files`, `ftbench.results`, torch.
"""
