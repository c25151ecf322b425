"""Peer of HiFT: the `hift` package (PyPI hift 0.0.5, the paper authors').

Its public API is `HiFTrainer`, a subclass of transformers' `Trainer`, imported
with the package. hift 0.0.5 was written against transformers 4.x and does not
import with transformers 5 (it imports `is_torch_tpu_available`, which
transformers removed): the table then shows that exact error. No plain loop is
written for it, because the package offers none: where it imports, the row says
so instead of timing a loop that is not hift's.
"""

from __future__ import annotations

from torch import nn

from ftbench.bench.peers.loop import Trainable


def prepare(model: nn.Module, spec: dict) -> Trainable:
    from importlib.metadata import version

    from hift import HiFTrainer  # noqa: F401  (the import is the check)

    raise RuntimeError(f"hift {version('hift')} imports here, but its only entry point is HiFTrainer "
                       "(a transformers Trainer); the benchmark times plain loops only")
