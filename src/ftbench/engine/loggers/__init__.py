"""Metric loggers: W&B, TensorBoard and MLflow, any number at once (`logger=[tensorboard,mlflow]`), each
imported only when selected.

Every backend takes the same four calls: `log(values, step)` (per-step scalars such as `train/loss` and
the evaluation metrics), `summary(values)` (the run's final figures), `close(status)` (after result.json
is written: the backends log the memory and throughput figures and keep result.json as an artifact) and
`log_report(files)` at the end of a sweep (the comparison table and plot). A backend that fails (an
unwritable folder, a server that does not answer) costs one warning line and is dropped; the run goes on
and result.json is written as always.
"""

from ftbench.engine.loggers.fanout import Loggers, NullLogger, log_report, make_logger

__all__ = ["Loggers", "NullLogger", "log_report", "make_logger"]
