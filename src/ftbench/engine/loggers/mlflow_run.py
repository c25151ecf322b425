"""MLflow: one experiment per sweep, one run per job, through MLflow's client API. With no
`tracking_uri` the store is local, `sqlite:///<sweep or run folder>/mlflow.db` with artifacts in
`mlartifacts/` beside it; open it with `mlflow ui --backend-store-uri sqlite:///<folder>/mlflow.db`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftbench import results
from ftbench.engine.loggers.base import NullLogger, Where, figures, flatten, number

PARAMS_PER_CALL = 100  # MLflow's log_batch limit on parameters
PARAM_CHARS = 6000  # MLflow's limit on a parameter value's length


class MlflowRun(NullLogger):
    """A run named after the job in the sweep's experiment: the flattened resolved config as parameters,
    per-step metrics (`train/loss`, `dev/acc`), at the end result.json's figures (memory in bytes,
    throughput, metrics) at the last step and result.json as an artifact. A server gets `timeout_s` per
    request and no retry; what it raises (MlflowException, OSError) is the caller's to report."""

    def __init__(self, cfg, at: Where, config: dict[str, Any]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        local = cfg.tracking_uri is None
        if local:
            at.folder.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(cfg.tracking_uri or f"sqlite:///{(at.folder / 'mlflow.db').resolve()}")
        self.timeout, self.at, self.last_step = cfg.timeout_s, at, 0
        with self.limits():
            name = cfg.experiment or at.experiment
            found = self.client.get_experiment_by_name(name)
            artifacts = (at.folder / results.LOGGER_COPIES[0]).resolve().as_uri() if local else None
            experiment = found.experiment_id if found else self.client.create_experiment(name, artifacts)
            self.run_id = self.client.create_run(experiment, run_name=at.job).info.run_id
            params = [Param(k, str(v)[:PARAM_CHARS]) for k, v in flatten(config).items()]
            for start in range(0, len(params), PARAMS_PER_CALL):
                self.client.log_batch(self.run_id, params=params[start:start + PARAMS_PER_CALL])

    @contextmanager
    def limits(self) -> Iterator[None]:
        """MLflow's HTTP timeout and retries (read from the environment at each request) set to
        `timeout_s` and none while ftbench calls it, and put back afterwards."""
        saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
        os.environ.update(MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, round(self.timeout))),
                          MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def _metrics(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if number(v)]
        if batch:
            with self.limits():
                self.client.log_batch(self.run_id, metrics=batch)

    def log(self, values: dict[str, Any], step: int) -> None:
        self._metrics(values, step)
        self.last_step = step

    def close(self, status: str) -> None:
        path = self.at.output_dir / results.FILENAME
        with self.limits():
            if path.is_file():
                result = results.load(path).to_json()
                self._metrics(figures(result), (result.get("train") or {}).get("steps") or self.last_step)
                self.client.log_artifact(self.run_id, str(path))
            self.client.set_tag(self.run_id, "status", status)
            self.client.set_terminated(self.run_id, "FINISHED" if status == "ok" else "FAILED")

    def keep_report(self, files: dict[str, Path]) -> None:
        """The sweep's comparison report (report.md, .csv, .png) as the artifacts of a `comparison` run."""
        with self.limits():
            for path in files.values():
                self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, "FINISHED")
