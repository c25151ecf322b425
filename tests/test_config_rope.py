"""RoPE settings a family's config refuses (config/rope.py): transformers only logs them and builds the model
with senseless frequencies; ftbench refuses them, on a folder's config.json and on a random-init shape."""

import json
import logging

import pytest

from ftbench.config.folders import require_config
from ftbench.config.rope import ROPE_LOGGER, rope_problem
from ftbench.errors import UserError
from ftbench.models.loading import architecture_config
from helpers import compose

LLAMA = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 4, "vocab_size": 64}
REFUSED = "rope_scaling.factor is -2.0; transformers refuses it (must be a float or int >= 1); write a value it accepts"


@pytest.mark.parametrize("values,refusal", [
    ({**LLAMA, "rope_scaling": {"rope_type": "linear", "factor": -2.0}}, REFUSED),
    # a config.json as transformers 5 writes it holds both: the scaling the older name gives is the one refused
    ({**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
      "rope_scaling": {"rope_type": "linear", "factor": -2.0}}, REFUSED),
    ({**LLAMA, "rope_parameters": {"rope_type": "linear", "factor": 0.5, "rope_theta": 1e4}},
     "rope_parameters.factor is 0.5; transformers refuses it (must be a float or int >= 1)"),
    ({**LLAMA, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 1, "beta_slow": 32,
                                   "rope_theta": 1e4}},
     "rope_parameters.beta_fast is 1; transformers refuses it (must be greater than beta_slow)"),
    ({**LLAMA, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, None),
    ({**LLAMA, "rope_scaling": {"rope_type": "linear", "factor": 2.0, "unknown_key": 1}}, None),  # only noted
    (LLAMA, None),
    ({"model_type": "bert", "hidden_size": 16, "num_attention_heads": 4}, None),  # no rotary positions
])
def test_a_rope_setting_the_config_refuses_is_named_with_its_value(values, refusal):
    logger = logging.getLogger(ROPE_LOGGER)
    level, propagate = logger.level, logger.propagate
    problem = rope_problem(values)
    assert problem == refusal if refusal is None else problem.startswith(refusal), problem
    assert (logger.level, logger.propagate, logger.handlers) == (level, propagate, [])  # the logger as it was


def test_a_folder_and_a_shape_with_a_refused_rope_setting_are_refused_on_their_key(tmp_path):
    """The folder's config.json before anything loads (was: trained silently, rc 0); the random-init shape where
    its config is built."""
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, "rope_scaling": {"rope_type": "linear",
                                                                                "factor": -2.0}}))
    with pytest.raises(UserError) as refused:
        require_config(tmp_path / "config.json", "model.path")
    assert str(refused.value) == f"model.path: '{tmp_path / 'config.json'}': {REFUSED}"
    mcfg = compose("model=tiny-llama", "+model.shape.rope_scaling={rope_type:linear,factor:-2.0}").model
    with pytest.raises(UserError) as refused:
        architecture_config(mcfg)
    assert str(refused.value) == f"model.shape: {REFUSED}"
