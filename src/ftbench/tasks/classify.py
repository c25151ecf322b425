"""Scoring for classification and regression heads, shared by GLUE and the synthetic task, and the
validation split they can hold out of their training data (task.validation_from_train)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from ftbench.engine.batches import to_device
from ftbench.errors import UserError
from ftbench.progress import Work
from ftbench.tasks import metrics
from ftbench.tasks.base import EvalContext, Example, batched


@torch.no_grad()
def score(model: torch.nn.Module, examples: list[Example], ctx: EvalContext,
          collate: Callable, metric_names: Sequence[str], regression: bool, split: str) -> dict[str, float]:
    """Run the model over `examples`; return {"<split>/<metric>": value} plus the mean loss."""
    if ctx.max_samples is not None:
        examples = examples[: ctx.max_samples]
    was_training = model.training
    model.eval()
    predictions, labels, loss_sum = [], [], 0.0
    with Work(f"evaluate {split}", len(examples), "examples", ctx.progress) as work:
        for chunk in batched(examples, ctx.batch_size):
            batch = to_device(collate(chunk, ctx.pad_to_multiple_of), ctx.device)
            with ctx.autocast():
                out = model(**batch)
            logits = out.logits.float()
            loss_sum += float(out.loss) * len(chunk)
            predictions.append(logits.squeeze(-1) if regression else logits.argmax(-1))
            labels.append(batch["labels"])
            work.advance(len(chunk))
    model.train(was_training)
    preds = torch.cat(predictions).cpu().numpy()
    golds = torch.cat(labels).cpu().numpy()
    values = metrics.compute(metric_names, preds, golds)
    values["loss"] = loss_sum / max(len(examples), 1)
    return {f"{split}/{name}": value for name, value in values.items()}


def hold_out(examples: list[Example], size: int | float | None, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, validation): `size` of `examples` held out (a fraction < 1, or a count), drawn with `seed`,
    both in their first order (task.validation_from_train; None: all train, no validation).
    Raises UserError when either would be empty."""
    if size is None:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:round(size * len(examples)) if size < 1 else int(size)])
    if not held or len(held) == len(examples):
        raise UserError("task.validation_from_train", f"{size:g} of {len(examples)} training examples leaves an "
                        "empty split; hold out some and keep some (a fraction in (0, 1) or a smaller count)")
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


VALIDATION = "val"  # the held-out split's name in metric keys: val/acc
