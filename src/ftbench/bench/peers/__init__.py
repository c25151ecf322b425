"""Peers: the implementations a user would pick instead of ftbench, run beside it.

Each peer is one module with `prepare(model, spec) -> Trainable`: it turns the
plain transformers model into what that implementation trains, through the
peer's own public API only. `loop.py` trains it in a plain loop that never
imports ftbench's training code (only the CPU memory tracer, so both sides are
measured by the same instrument); `timing.py` runs ftbench and the peers side by
side (`make bench-peers`), `rounds.py` decides how many timed rounds, `table.py`
pairs each method with its peer and writes the table.

| peer | what a user would write | stands beside ftbench's |
| --- | --- | --- |
| torch | `torch.optim.AdamW` over every weight | full (and every method, as the dense baseline) |
| peft | `peft.get_peft_model(LoraConfig(...))` + AdamW | lora (and every method, as the adapter baseline) |
| badam | `badam.BlockOptimizer` around AdamW (PyPI badam 1.4) | badam |
| hift | the `hift` package (PyPI hift 0.0.5) | hift |
| galore | galore-torch's `GaLoreAdamW` over its README's parameter groups | galore |
| apollo | apollo-torch's `APOLLOAdamW` over its README's parameter groups | apollo |
| adam-mini | the adam-mini package's `Adam_mini` built as its README shows | adam-mini |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    module: str  # the module here that builds it (bench/peers/<module>.py)
    what: str  # what it is, in the table
    method: str  # the ftbench method it stands beside, whose settings it copies
    matching: tuple[str, ...] = ()  # overrides that make that method run as the peer does
    loop: bool = True  # False: the package offers no plain loop to time (its row says why)


PEERS = {
    "torch": Peer("torch_adamw", "plain PyTorch loop, AdamW", "full"),
    "peft": Peer("peft_lora", "PEFT LoRA, AdamW", "lora"),
    # badam's own blocks: every decoder layer in ascending order, the embedding and the head never (badam_block.py)
    "badam": Peer("badam_block", "badam 1.4 BlockOptimizer", "badam",
                  ("method.order=down2up", "method.reshuffle=false", "method.always_active=[]",
                   "method.frozen_units=[embedding,head]")),
    "hift": Peer("hift_package", "hift 0.0.5", "hift", loop=False),
    "galore": Peer("galore_readme", "galore-torch 1.0 GaLoreAdamW (README loop)", "galore"),
    "apollo": Peer("apollo_readme", "apollo-torch 1.0.3 APOLLOAdamW (README loop)", "apollo"),
    "adam-mini": Peer("adam_mini_readme", "adam-mini 1.1.1 Adam_mini (README loop)", "adam-mini"),
}
