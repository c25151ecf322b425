"""QLoRA: PEFT's LoRA adapters over a base whose block projections are bitsandbytes `Linear4bit`s.

What is held in which dtype (Dettmers et al., 2023, §3, Eq. 5-6):

- each attention and MLP projection of the blocks (architecture.py): its weight quantized once, when
  the method prepares, to 4 bits (`quant_type`: NF4, the information-theoretically optimal data type
  for normal weights, or FP4), two per byte, in blocks of `block_size` (64) weights, each block with
  its absmax. With `double_quant` the absmaxes are themselves quantized to 8 bits in blocks of 256 with
  one fp32 absmax per block (0.127 instead of 0.5 bits per weight); without, one fp32 absmax per block.
  Biases stay in the model's dtype;
- every other weight (embeddings, norms, the task or LM head) stays in the model's dtype;
- the forward dequantizes each 4-bit weight to the compute dtype (the model's: bf16 on a GPU,
  fp32 on the CPU) for its product, one layer at a time;
- the adapters (PEFT's bnb `Linear4bit` LoRA layer) are fp32 (PEFT's `autocast_adapter_dtype`) and
  trained by the run's optimizer (`optim.name`, 8-bit AdamW included), as LoRA's are.

The export: the adapter as PEFT saves it (it applies over the same NF4-quantized base:
`from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=...))`
and then `PeftModel.from_pretrained`), and a merged model over the *dequantized* base: each 4-bit weight
dequantized to the compute dtype plus its adapter's delta (PEFT's `get_delta_weight`), saved as plain
`nn.Linear` weights, so it loads with plain `from_pretrained` and computes what the trained model
computed. It is not the original base plus the delta: the quantization error stays in it.

bitsandbytes 0.50.2 runs the 4-bit forward and backward on the CPU as on a GPU (its AVX512-BF16 inference
kernel is kept off: `base_model`).
"""

from __future__ import annotations

import torch
from torch import nn

from ftbench.methods.base import MethodContext
from ftbench.methods.lora.method import Lora
from ftbench.methods.projected import library
from ftbench.methods.qlora.config import QloraConfig
from ftbench.models.architecture import ATTENTION_ROLES, MLP_ROLES, architecture, replace_module

QUANTIZED = (*ATTENTION_ROLES, *MLP_ROLES)  # the block projections' roles (architecture.py): stored in 4 bits


class Qlora(Lora):
    config_class = QloraConfig
    needs_linear = True  # it replaces projections by Linear4bit: GPT-2's Conv1D is refused up front
    quantizes_base = True

    def check_model(self, model: nn.Module, head: str) -> None:
        """LoRA's target check, then: the block projections it quantizes are `nn.Linear`s."""
        super().check_model(model, head)
        arch = architecture(model)
        arch.require_linear(model, [r for r in QUANTIZED if arch.blocks and arch.has(arch.blocks[0], r)], "qlora")

    def base_model(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        """Replace every block projection by a `Linear4bit` holding its weight quantized (module docstring)."""
        bnb = library("bitsandbytes", "bitsandbytes", "qlora")
        arch, cfg = architecture(model), self.cfg

        def quantized(linear: nn.Linear) -> nn.Module:
            weight = linear.weight
            layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                      compute_dtype=weight.dtype, compress_statistics=cfg.double_quant,
                                      quant_type=cfg.quant_type, device="meta")
            layer.weight = bnb.nn.Params4bit(weight.detach(), requires_grad=False, blocksize=cfg.block_size,
                                             compress_statistics=cfg.double_quant, quant_type=cfg.quant_type)
            if linear.bias is not None:
                layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
            # A private attribute of bitsandbytes' Linear4bit, set off on purpose: on a CPU with AVX512-BF16,
            # bitsandbytes 0.50 repacks the weight in place at the first forward in eval mode without grad and
            # from then on runs a bf16 inference kernel, in training too, where it has no backward (the input
            # gradient is lost without a word; with a bias, autograd's in-place error). Off, every forward
            # dequantizes to the compute dtype: evaluation computes what training computes, and exports read
            # the weight in its one layout.
            layer.support_avx512bf16_for_cpu = False
            return layer.to(weight.device)  # quantizes the weight where it lives

        # The modules a transformers model keeps in full precision (T5's `wo`, whose forward casts its input to
        # the weight's dtype) stay unquantized, as transformers' own bitsandbytes quantizer leaves them: the
        # class attributes `_keep_in_fp32_modules(_strict)` are where transformers declares them.
        keep = {*(getattr(model, "_keep_in_fp32_modules", None) or ()),
                *(getattr(model, "_keep_in_fp32_modules_strict", None) or ())}
        paths = [p for p in arch.projections(QUANTIZED) if not keep & set(p.split("."))]
        for path in paths:
            replace_module(model, path, quantized)
        model.is_loaded_in_4bit = True  # how PEFT knows to wrap Linear4bit in its bnb LoRA layer
        self.quantized = len(paths)
        return model

    @torch.no_grad()
    def merged(self, model: nn.Module) -> nn.Module:
        """The dequantized base with each adapter's delta added, as plain `nn.Linear`s (module docstring)."""
        bnb = library("bitsandbytes", "bitsandbytes", "qlora")
        for name, layer in list(model.named_modules()):
            base = getattr(layer, "base_layer", None)
            if not isinstance(base, bnb.nn.Linear4bit):
                continue
            weight = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state).to(base.compute_dtype)
            for adapter in layer.active_adapters:
                weight += layer.get_delta_weight(adapter).to(weight.dtype)
            plain = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                              device=weight.device, dtype=weight.dtype)
            plain.weight.copy_(weight)
            if base.bias is not None:
                plain.bias.copy_(base.bias)
            replace_module(model, name, lambda _, plain=plain: plain)
        merged = model.merge_and_unload()  # nothing quantized is left: this unwraps the task head's copy
        del merged.is_loaded_in_4bit
        return merged

    def describe(self, model: nn.Module) -> dict:
        return {**super().describe(model), "quant_type": self.cfg.quant_type, "double_quant": self.cfg.double_quant,
                "block_size": self.cfg.block_size, "quantized_linears": self.quantized,
                "compute_dtype": "the model's dtype; adapters fp32"}
