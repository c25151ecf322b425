"""GGUF checkpoints: a tiny GGUF written here loads through model.path / model.gguf_file with the
same logits as the model it was written from, is converted once and then read from the cache,
and every way it can go wrong ends in one line naming the key."""

import importlib.util
import os
import shutil

import numpy as np
import pytest
import torch

from ftbench.errors import UserError
from ftbench.models import gguf as ftbench_gguf
from ftbench.models.loading import load_model
from ftbench.models.tokenizer import load_tokenizer
from helpers import compose

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")

HEADS, KV_HEADS = 4, 2
# Hugging Face LLaMA names -> llama.cpp names (what convert_hf_to_gguf.py writes).
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
       "lm_head.weight": "output.weight"}
LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def rope_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order of q/k (convert_hf_to_gguf.py `permute`); transformers undoes it."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, architecture: str = "llama", head_count: int = HEADS, kv_heads: int = KV_HEADS,
                    seed: int = 0):
    """A 2-layer GQA LLaMA with a byte-level BPE tokenizer, as an unquantized (F32) GGUF file
    (`head_count`, `kv_heads`: the heads its metadata says, HEADS and KV_HEADS unless a test writes an inconsistent
    file; `seed`: its random weights, the file's size is the same for any).
    Returns the model it was written from."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, vocab_size=261, max_position_embeddings=64,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_block_count(2)
    writer.add_head_count(head_count)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(261)
    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<pad>", "<s>", "</s>", "<unk>", *alphabet, "Ġt"])
    writer.add_token_types([3] * 4 + [1] * 257)
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(3)
    for name, tensor in model.state_dict().items():
        array = tensor.numpy().astype(np.float32)
        if name in TOP:
            writer.add_tensor(TOP[name], array)
            continue
        _, _, layer, *rest = name.split(".")
        part = ".".join(rest[:-1])
        if part == "self_attn.q_proj":
            array = rope_permute(array, HEADS)
        elif part == "self_attn.k_proj":
            array = rope_permute(array, KV_HEADS)
        writer.add_tensor(f"blk.{layer}.{LAYER[part]}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "cache"))
    ftbench_gguf._converted.cache_clear()
    yield tmp_path / "cache" / "gguf"
    ftbench_gguf._converted.cache_clear()


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    reference = write_tiny_gguf(folder / "tiny.gguf")
    return folder / "tiny.gguf", reference


@pytest.mark.parametrize("how", ["folder+name", "file"])
def test_a_gguf_file_loads_with_the_logits_it_was_written_with(tiny_file, cache, how):
    path, reference = tiny_file
    overrides = ([f"model.path={path.parent}", f"model.gguf_file={path.name}"] if how == "folder+name"
                 else [f"model.path={path}"])
    cfg = compose("model=tiny-llama", "model.random_init=false", *overrides)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, "causal_lm", 2, torch.device("cpu"), "fp32", "sdpa").eval()
    ids = tokenizer("hello there", return_tensors="pt")
    assert tokenizer.decode(ids["input_ids"][0]) == "hello there"
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, reference(**ids).logits, rtol=0, atol=0)
    assert getattr(model.config, "quantization_config", None) is None  # the cache is a plain HF folder


def test_the_first_load_converts_later_loads_read_the_cache(tiny_file, cache, monkeypatch, capfd):
    path, _ = tiny_file
    cfg = compose("model=tiny-llama", "model.random_init=false", f"model.path={path}")
    capfd.readouterr()
    folder = ftbench_gguf.local_folder(cfg.model)
    assert "de-quantizing GGUF tensors" not in capfd.readouterr().err  # transformers' own bar stays off
    assert folder.parent == cache and sorted(p.name for p in cache.iterdir()) == [folder.name]  # no temp left
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    ftbench_gguf._converted.cache_clear()

    def no_second_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(ftbench_gguf, "convert", no_second_conversion)
    assert ftbench_gguf.local_folder(cfg.model) == folder


def logits_match(cfg, reference) -> bool:
    """Whether the model `cfg` loads gives `reference`'s logits, exactly, on a short text."""
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, "causal_lm", 2, torch.device("cpu"), "fp32", "sdpa").eval()
    ids = tokenizer("hello there", return_tensors="pt")
    with torch.no_grad():
        return torch.equal(model(**ids).logits, reference(**ids).logits)


def test_a_file_rewritten_with_its_old_size_and_times_is_converted_again(tmp_path, cache):
    """Was: the copy was keyed on path, size and mtime, so new weights written in place with the old time
    stamps (touch -r) loaded the old copy ("using the converted copy in ..."). The key is the content's."""
    path = tmp_path / "tiny.gguf"
    old = write_tiny_gguf(path, seed=0)
    cfg = compose("model=tiny-llama", "model.random_init=false", f"model.path={path}")
    assert logits_match(cfg, old)
    size, times = path.stat().st_size, (path.stat().st_atime_ns, path.stat().st_mtime_ns)
    new = write_tiny_gguf(path, seed=1)
    os.utime(path, ns=times)
    assert path.stat().st_size == size
    ftbench_gguf._converted.cache_clear()  # a new process
    assert logits_match(cfg, new) and not logits_match(cfg, old)
    assert len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("left", [{"config.json": "{}"}, {"config.json": "{}", "gguf-source.json": "{}"},
                                  {"config.json": "{}", "gguf-source.json": '{"sha256": "0"}'}])
def test_a_copy_cut_short_is_never_used(tiny_file, cache, left):
    """A folder where the copy goes whose gguf-source.json (written last) is missing or names another digest is
    no whole copy: converted again in its place (was: any folder holding a config.json was used)."""
    path, reference = tiny_file
    folder = ftbench_gguf.cache_folder(path, ftbench_gguf.content_digest(path))
    folder.mkdir(parents=True)
    for name, text in left.items():
        (folder / name).write_text(text)
    cfg = compose("model=tiny-llama", "model.random_init=false", f"model.path={path}")
    assert ftbench_gguf.local_folder(cfg.model) == folder and logits_match(cfg, reference)
    assert ftbench_gguf.complete_copy(folder, ftbench_gguf.content_digest(path))


def test_an_upper_case_gguf_suffix_reads_as_gguf(tiny_file, cache, tmp_path):
    """Was: model.path=TINY.GGUF refused ("is a file, not a directory"), and transformers reads a file not named
    .gguf as a torch pickle."""
    from ftbench.cli import validate

    path, reference = tiny_file
    upper = tmp_path / "TINY.GGUF"
    shutil.copy(path, upper)
    given = ["model=tiny-llama", "model.random_init=false", f"model.path={upper}", "task=synthetic_lm"]
    assert validate(given, multirun=False) is None
    assert logits_match(compose(*given), reference)
    assert validate([*given[:2], f"model.path={tmp_path}", "model.gguf_file=TINY.GGUF", "task=synthetic_lm"],
                    multirun=False) is None


def test_the_cache_follows_ftbench_cache_then_hf_home(monkeypatch, tmp_path):
    monkeypatch.delenv("FTBENCH_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert ftbench_gguf.cache_root() == tmp_path / "hf" / "ftbench" / "gguf"
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "mine"))
    assert ftbench_gguf.cache_root() == tmp_path / "mine" / "gguf"


def test_an_interrupted_conversion_leaves_no_cache(tiny_file, cache, monkeypatch):
    path, _ = tiny_file
    from transformers import PreTrainedModel

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        ftbench_gguf.convert(path, cache / "tiny", "model.path", ftbench_gguf.content_digest(path))
    assert list(cache.iterdir()) == []


def test_an_architecture_transformers_cannot_read_is_one_line(tmp_path, cache):
    write_tiny_gguf(tmp_path / "odd.gguf", architecture="nosucharch")
    cfg = compose("model=tiny-llama", "model.random_init=false", f"model.path={tmp_path}", "model.gguf_file=odd.gguf")
    with pytest.raises(UserError, match=r"^model.gguf_file: odd.gguf: transformers cannot de-quantize it "
                                        r"\(.*nosucharch.*llama.*model.path=DIR"):
        load_tokenizer(cfg.model)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("how", ["folder+name", "file"])
def test_a_config_transformers_refuses_names_the_key_of_the_file(tmp_path, cache, how):
    write_tiny_gguf(tmp_path / "odd.gguf", head_count=3)  # a width of 32 is not a multiple of 3 heads
    where, key = ((f"model.path={tmp_path}", "model.gguf_file=odd.gguf"), "model.gguf_file") if how == "folder+name" \
        else ((f"model.path={tmp_path / 'odd.gguf'}",), "model.path")
    cfg = compose("model=tiny-llama", "model.random_init=false", *where)
    with pytest.raises(UserError, match=rf"^{key}: odd.gguf: transformers refuses the config it holds \(.*"
                                        r"The hidden size \(32\) is not a multiple of the number of attention heads "
                                        r"\(3\)\); .*model.path=DIR"):
        load_model(cfg.model, "causal_lm", 2, torch.device("cpu"), "fp32", "eager")
    assert list(cache.iterdir()) == []


def test_sizes_that_disagree_in_the_files_metadata_are_one_line(tmp_path, cache):
    """config/sizes.py: was "transformers cannot de-quantize it (cannot reshape array of size 512 ...)"."""
    write_tiny_gguf(tmp_path / "odd.gguf", kv_heads=3)
    cfg = compose("model=tiny-llama", "model.random_init=false", f"model.path={tmp_path / 'odd.gguf'}")
    with pytest.raises(UserError, match=r"^model.path: odd.gguf: in the config its metadata makes, num_attention_heads "
                                        r"4 is not a multiple of num_key_value_heads 3: each key/value head serves an "
                                        r"equal group of query heads; write num_key_value_heads as a divisor of 4 "
                                        r"\(2 or 4\) \(in the file's metadata\); or give a Hugging Face folder: "
                                        r"model.path=DIR$"):
        load_model(cfg.model, "causal_lm", 2, torch.device("cpu"), "fp32", "eager")
    assert list(cache.iterdir()) == []


def test_a_size_below_one_in_the_files_metadata_is_one_line(tmp_path, cache, monkeypatch):
    """A width of -32 (an int32 the library takes as it is): was torch's "negative dimension" traceback."""
    monkeypatch.setattr(gguf.GGUFWriter, "add_embedding_length",
                        lambda writer, n: writer.add_int32(f"{writer.arch}.embedding_length", -n))
    write_tiny_gguf(tmp_path / "odd.gguf")
    cfg = compose("model=tiny-llama", "model.random_init=false", f"model.path={tmp_path / 'odd.gguf'}")
    with pytest.raises(UserError, match=r"^model.path: odd.gguf: the config it holds sets hidden_size=-32, but a size "
                                        r"must be a positive integer; .*model.path=DIR$"):
        load_model(cfg.model, "causal_lm", 2, torch.device("cpu"), "fp32", "eager")
    assert list(cache.iterdir()) == []


def test_without_the_gguf_package_the_fix_is_named(tiny_file, cache, monkeypatch):
    import transformers.utils.import_utils as import_utils

    monkeypatch.setattr(import_utils, "is_gguf_available", lambda *a: False)
    cfg = compose("model=tiny-llama", "model.random_init=false", f"model.path={tiny_file[0]}")
    with pytest.raises(UserError, match=r"^model.gguf_file: reading a GGUF file needs the gguf package: pip install gguf"):
        ftbench_gguf.local_folder(cfg.model)


def test_a_missing_file_names_the_files_that_are_there(tiny_file, cache):
    cfg = compose("model=tiny-llama", "model.random_init=false", f"model.path={tiny_file[0].parent}",
                  "model.gguf_file=other.gguf")
    with pytest.raises(UserError, match=r"^model.gguf_file: no GGUF file at .*other.gguf; that folder holds: tiny.gguf"):
        ftbench_gguf.locate(cfg.model)


def test_a_packaged_file_is_found_without_importing_the_package(tmp_path, monkeypatch):
    package = tmp_path / "pkg_with_gguf"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('this runtime is not installed')\n")
    (package / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose("model=smollm2-135m", "model.package=pkg_with_gguf", "model.gguf_file=m.gguf")
    assert ftbench_gguf.locate(cfg.model) == (package / "m.gguf").resolve()
    assert importlib.util.find_spec("pkg_with_gguf") is not None
    cfg = compose("model=smollm2-135m", "model.package=not_installed_pkg")
    with pytest.raises(UserError, match=r"^model.package: Python package 'not_installed_pkg' is not installed; "
                                        r"pip install --no-deps not-installed-pkg"):
        ftbench_gguf.locate(cfg.model)
