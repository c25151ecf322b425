"""Job hygiene: after a job nothing of it stays alive in the process (every method, table-driven)."""

import gc
import weakref

import pytest

import ftbench.job.steps
from ftbench.methods.base import Method
from helpers import run
from test_methods import METHODS


def _record_job_objects(monkeypatch) -> list[weakref.ref]:
    """Weak references to the model's parameters and the optimizer of the next job."""
    refs: list[weakref.ref] = []
    load_model, attach = ftbench.job.steps.load_model, Method.attach

    def recording_load(*args, **kwargs):
        model = load_model(*args, **kwargs)
        refs.extend(weakref.ref(p) for p in model.parameters())
        return model

    def recording_attach(self, optimizer):
        refs.append(weakref.ref(optimizer))
        return attach(self, optimizer)

    monkeypatch.setattr(ftbench.job.steps, "load_model", recording_load)
    monkeypatch.setattr(Method, "attach", recording_attach)
    return refs


@pytest.mark.parametrize("name,overrides", METHODS)
def test_a_job_leaves_nothing_alive(tmp_path, monkeypatch, name, overrides):
    refs = _record_job_objects(monkeypatch)
    result = run(tmp_path / "run", "mode=profile", f"method={name}", "profile.batch_size=2", "profile.seq_len=8",
                 "profile.warmup_steps=1", "profile.steps=2", "profile.trace_memory=false", "hardware.precision=bf16-pure", *overrides)
    assert result["exit_code"] == 0, result["error"]
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert refs and not alive, f"{len(alive)} of {len(refs)} parameters/optimizers outlive the job: " \
        f"{[type(a).__name__ for a in alive[:3]]}"
