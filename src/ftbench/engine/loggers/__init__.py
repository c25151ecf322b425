"""Metric loggers: W&B, TensorBoard and MLflow, any number at once (`logger=[tensorboard,mlflow]`), each
imported only when selected.

Every backend takes `log(values, step)` (per-step scalars such as `train/loss`, and the evaluation
metrics), `summary(values)` (the run's final figures) and `close(status)` (after result.json is written:
the backends log its memory and throughput figures and keep it as an artifact); TensorBoard and MLflow
also keep a sweep's comparison report (`log_report`, called by the sweep's report at its end). A backend
that fails (an unwritable folder, a server that does not answer) costs one warning line and is dropped;
the run goes on and result.json is written as always.
"""

from ftbench.engine.loggers.fanout import Loggers, NullLogger, log_report, make_logger

__all__ = ["Loggers", "NullLogger", "log_report", "make_logger"]
