"""Engagement: how many of the parameters a method claims to train actually changed, per unit.

A method can train nothing and still report a loss curve, a trainable count and a metric (a frozen
model with a fresh head, an optimizer that never got the parameters: LMFlow #726). Engagement compares
the model's parameters after training with what they were before, element by element, and groups the
changed elements by unit (the embedding, each layer, the task head, the rest).

Before training each element is kept as one byte: the XOR of the bytes of its bits, on the CPU. A
changed element is missed only when its new bits fold to the same byte (about 1 in 256 changes), so
`changed` is exact or a slight undercount, never an overcount; the cost is one byte per watched
element of host memory.

Two claims: `claimed_per_step` (params.trainable: the largest set one optimizer step updates) and
`claimed` (what the method says its steps, all of them, may change: a rotation's visited blocks, every
entry a sparse top-k may pick). `changed` counts the whole run, so it is set against `claimed`; a method
that trains what it claims stays at or below 100 %. The warning is set against one step's claim: a run
that changed less than a tenth of what a single step says it updates trained far less than it claims,
however short the run.

The report names what the method claims that never changed: the units in which no element of a claimed
parameter changed (for a rotation, among the units it held), or where every such unit changed somewhere,
the claimed parameters that did not, so a user knows which part to look at.

May import: torch, ftbench.config.folders (`listing`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ftbench.config.folders import listing

log = logging.getLogger("ftbench")

# Below this share of one step's claimed elements changed over the run, the method "trained far less than it claims".
# Full fine-tuning on a short run leaves the embedding rows of unseen tokens untouched (MiniLM: half its
# parameters are token embeddings), so the line sits well below what an honest method reaches.
ENGAGED_SHARE = 0.1


def folded_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """Each element's bytes folded by XOR into one, as a flat uint8 CPU tensor of `tensor.numel()` bytes."""
    flat = tensor.detach().contiguous().reshape(-1)
    columns = flat.view(torch.uint8).reshape(flat.numel(), flat.element_size())
    folded = columns[:, 0].clone()
    for i in range(1, flat.element_size()):
        folded ^= columns[:, i]
    return folded.to("cpu")


class Watch:
    """The parameters `named` (name -> tensor), fingerprinted when made; `report()` after training.

    `unit_of(name) -> str` names the unit a parameter belongs to."""

    def __init__(self, named: dict[str, torch.Tensor], unit_of: Callable[[str], str]):
        self.named, self.unit_of = named, unit_of
        self.before = {name: folded_bytes(t) for name, t in named.items()}

    def report(self, claimed: int, claimed_per_step: int, names: frozenset[str] | None = None) -> dict:
        """{claimed, claimed_per_step, watched, changed, changed_pct_of_claimed, units: {unit: {watched,
        changed}}, unchanged, warning}: element counts; `claimed` is what the method says all its steps may
        change (`Method.claimed_over_run`), in the parameters `names` (None: every one watched),
        `claimed_per_step` what one step updates (params.trainable). `unchanged` lists the units (model order)
        holding a claimed parameter in which no element changed. `warning` is None or one line, also logged,
        naming the unchanged units, or where none is, the claimed parameters that never changed. Nothing
        watched (no parameter matched the claimed names, as under FSDP's flattened ones): no warning,
        `watched` 0 says so."""
        units: dict[str, dict[str, int]] = {}
        claimed_units, idle = set(), []  # the units holding a claimed parameter; the claimed parameters unchanged
        for name, tensor in self.named.items():
            unit = units.setdefault(self.unit_of(name), {"watched": 0, "changed": 0})
            moved = int((folded_bytes(tensor) != self.before[name]).sum())
            unit["watched"] += tensor.numel()
            unit["changed"] += moved
            if names is None or name in names:
                claimed_units.add(self.unit_of(name))
                idle += [] if moved else [name]
        unchanged = [name for name, unit in units.items() if name in claimed_units and not unit["changed"]]
        changed = sum(u["changed"] for u in units.values())
        share = changed / claimed if claimed and units else None
        step_share = changed / claimed_per_step if claimed_per_step and units else None
        report = {"claimed": claimed, "claimed_per_step": claimed_per_step,
                  "watched": sum(u["watched"] for u in units.values()), "changed": changed,
                  "changed_pct_of_claimed": None if share is None else round(100.0 * share, 3),
                  "units": units, "unchanged": unchanged,
                  "warning": warning(changed, claimed_per_step, step_share, unchanged or idle)}
        if report["warning"]:
            log.warning("engagement: %s", report["warning"])
        return report


def warning(changed: int, per_step: int, share: float | None, unchanged: list[str]) -> str | None:
    """One line when training changed nothing, or far less than one step claims to update (`per_step`
    elements; `share`: changed / per_step), naming the first of what the method claims that never changed
    (`unchanged`: units, or parameters) and how many more; else None."""
    where = f"; unchanged: {listing(unchanged)}" if unchanged else ""
    if share is not None and changed == 0:
        return f"trained nothing: none of the {per_step:,} parameters the method claims a step trains changed{where}"
    if share is not None and share < ENGAGED_SHARE:
        return (f"trained far less than it claims: {changed:,} parameters changed, against {per_step:,} a step "
                f"claims to train ({100.0 * share:.2g} %, below {100 * ENGAGED_SHARE:g} %){where}")
    return None
