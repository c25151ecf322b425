"""The memory planner: a run's train-phase peak predicted before any download and without a GPU
(`planner`, from traced probe steps of a cut-down model: `probe`, `extrapolate`, `held_state`),
its report and plan.json (`report`), and the largest micro-batch that fits (`micro_batch`).

May import: `ftbench.methods`, `ftbench.tasks`, `ftbench.engine` and below.
"""
