"""The RoPE settings of a config (rope_parameters, or rope_scaling as older config.json files name them) that
the family's config refuses: checked on a folder's config.json with its other values (folders.py `value_problem`)
and on a random-init model.shape where its config is built (models/loading.py `architecture_config`).

transformers validates them as it builds the config (its `validate_rope`) but only logs what it refuses (a
scaling factor below 1: "`rope_parameters`'s factor field must be a float or int >= 1, got -2.0") and builds
the model anyway, with frequencies that make no sense (negative ones); ftbench silences the library's
warnings, so its complaint is caught here and refuses the config instead. What it only notes (a key it does
not know, an explicit factor unlike the one the other fields imply) is left alone.
"""

from __future__ import annotations

import json
import logging
import re

from huggingface_hub.errors import StrictDataclassError

ROPE_LOGGER = "transformers.modeling_rope_utils"  # where transformers' RoPE validation says what it refuses
REFUSED = re.compile(r"`rope_parameters`'s (\w+) field (must .*?)(?:, got .*)?$")
HOLDERS = ("rope_parameters", "rope_scaling")


class Complaints(logging.Handler):
    """The messages of the records a logger emits while attached (`lines`)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def rope_problem(values: dict) -> str | None:
    """The first RoPE setting of a config (`values`: config.json's, or a shape's, with its model_type) that the
    family's config refuses, in words with the fix: "rope_scaling.factor is -2.0; transformers refuses it (must
    be a float or int >= 1); write a value it accepts". None when it refuses none, when the values set no RoPE
    settings, or when the config cannot be built from them (left to the loader, which says why)."""
    from transformers import CONFIG_MAPPING

    if not any(isinstance(values.get(name), dict) for name in HOLDERS):
        return None
    logger = logging.getLogger(ROPE_LOGGER)
    complaints, level, propagate = Complaints(), logger.level, logger.propagate
    logger.addHandler(complaints)
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # caught here: said in the refusal, not twice
    try:
        CONFIG_MAPPING[values["model_type"]](**{k: v for k, v in values.items() if k != "model_type"})
    except (StrictDataclassError, ValueError, TypeError, KeyError):
        return None
    finally:
        logger.removeHandler(complaints)
        logger.setLevel(level)
        logger.propagate = propagate
    for line in complaints.lines:
        refused = REFUSED.match(line)
        if refused:
            field, reason = refused.groups()
            path, value = setting(values, field)
            shown = json.dumps(value)
            return (f"{path} is {shown if len(shown) <= 40 else shown[:37] + '...'}; transformers refuses "
                    f"it ({reason}); write a value it accepts")
    return None


def setting(values: dict, field: str) -> tuple[str, object]:
    """Where `field` is among a config's RoPE settings (`values`' rope_parameters or rope_scaling; a family with
    one set per attention type nests them: "rope_parameters.sliding_attention.factor") and its value; under the
    first of them, null, where none gives it."""
    holders = [(name, values[name]) for name in HOLDERS if isinstance(values.get(name), dict)]
    for name, settings in holders:
        if field in settings:
            return f"{name}.{field}", settings[field]
        for layer, nested in settings.items():
            if isinstance(nested, dict) and field in nested:
                return f"{name}.{layer}.{field}", nested[field]
    return f"{holders[0][0]}.{field}", None
