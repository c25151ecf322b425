"""`make bench-real` (ftbench.bench.real): its cells pass the checks a run makes before it starts."""

import pytest

from ftbench.bench import real
from ftbench.config.schema import check
from helpers import SHARED_DATA, compose


@pytest.mark.parametrize("task", real.TASKS)
def test_the_real_llm_benchmark_cells_pass_the_config_checks(task):
    """The base and method cells compose and pass every check a run makes first (a knob the run cannot
    reach is refused at compose time: config/within.py), at the default budget and at a shorter one."""
    for settings in ([], ["train.max_steps=3"]):
        base, shared = real.cell_overrides(task, SHARED_DATA / task, settings)
        assert "eval.every_steps=" + (settings[0].split("=")[1] if settings else "10") in shared
        for overrides in (base, [*shared, "method=full"], [*shared, "method=lora"]):
            check(compose(*overrides))
