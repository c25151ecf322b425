"""The model's tokenizer: from model.tokenizer, the model's own folder or package, the hub, or, for a random-init
model, a byte-level one built in-process (no file)."""

from __future__ import annotations

from pathlib import Path

from ftbench.config.folders import listing, tokenizer_settings, tokenizer_subfolder
from ftbench.errors import UserError
from ftbench.models.hub import hub_error, offline_mode
from ftbench.models.loading import LOAD_ERRORS, local_source


def load_tokenizer(mcfg):
    """The model's tokenizer; a byte-level one built in-process for random-init models.

    Raises UserError naming model.tokenizer when the tokenizer cannot be loaded, or when its folder lacks its
    vocabulary file (`no_vocabulary`): the library built its class with the special tokens alone, or could build
    nothing from the settings files it holds (special_tokens_map.json alone)."""
    from transformers import AutoTokenizer

    source = mcfg.tokenizer or local_source(mcfg)
    if source is None and mcfg.random_init:
        return byte_level_tokenizer()
    source = source or mcfg.hub_id
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline_mode() or Path(source).is_dir())
    except LOAD_ERRORS as exc:
        settings = tokenizer_settings(Path(source).expanduser())
        if settings is not None:  # special_tokens_map.json alone: the library names no class it could build
            raise no_vocabulary(source, f", only {listing(settings)}" if settings else " nor any tokenizer file") from exc
        raise hub_error("model.tokenizer", f"the tokenizer of {source}", exc,
                        "set model.tokenizer=DIR (a folder saved with tokenizer.save_pretrained)",
                        local=Path(source).is_dir()) from exc
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):  # its class built from tokenizer_config.json alone
        raise no_vocabulary(source, f", only its {len(tokenizer)} special tokens "
                                    f"({', '.join(tokenizer.all_special_tokens)})")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def no_vocabulary(source: str, held: str) -> UserError:
    """The refusal of a tokenizer folder that lacks its vocabulary file, `held` saying what it has instead (", only"
    the special tokens its class was built with, or the settings files the library could build nothing from),
    naming a subfolder that holds a tokenizer."""
    deeper = tokenizer_subfolder(Path(source).expanduser())
    fix = (f"its subfolder {deeper} holds one: set model.tokenizer={deeper}" if deeper else
           "set model.tokenizer=DIR (a folder saved with tokenizer.save_pretrained)")
    return UserError("model.tokenizer", f"the tokenizer of {source} holds no vocabulary{held}: the folder lacks its "
                     f"vocabulary file (vocab.txt, tokenizer.json, ...); {fix}")


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
