"""How far SparseGrad's bf16 rotations (method.rotation_dtype=bfloat16, the default) move its top-k from
the fp32 rotations' (the reference's): the figures behind conf/method/sparsegrad.yaml's rotation_dtype.

    PYTHONPATH=src python scripts/sparsegrad_bf16_margin.py OVERRIDES...
    PYTHONPATH=src python scripts/sparsegrad_bf16_margin.py model=minilm task=sst2 \\
        task.data_dir=../shared/data/glue/sst2 train.max_steps=20 hydra.run.dir=/tmp/margin

Runs `ftbench method=sparsegrad OVERRIDES...` with each calibrated pair also kept in fp32 (the same Gram
matrices, not rounded), and at every MLP layer's backward compares the k entries the run keeps with the
top-k of the fp32 pair's rotated gradient (fp32 products), and with the exact (fp64) magnitudes. Prints,
over every layer and step: the share of kept entries not in the fp32 top-k (mean, max), the smallest
kept magnitude over the exact k-th largest, and the smallest share of the exact top-k's squared sum the
kept entries hold.
"""

from __future__ import annotations

import sys

import torch

from ftbench.methods.sparsegrad import rotations, sparse_linear
from ftbench.methods.top_k import top_k

FP32_PAIRS: dict[int, sparse_linear.Basis] = {}  # id(the run's pair) -> the same pair in fp32
ROWS: list[tuple[float, float, float]] = []  # per layer-step: differing share, smallest kept / k-th, energy


def keep_fp32(basis_of):
    def basis(self, core: bool, bf16: bool) -> sparse_linear.Basis:
        pair = basis_of(self, core, bf16)
        FP32_PAIRS[id(pair)] = basis_of(self, core, False)
        return pair
    return basis


def compare(weight_grad):
    def grad(self, g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor]:
        out = weight_grad(self, g, x)
        exact_pair = FP32_PAIRS.get(id(self.basis))
        if exact_pair is None:
            return out
        x = x.to(g.dtype)
        kept = out[0].coalesce().indices()
        kept = kept[0] * self.weight.shape[1] + kept[1]
        fp32 = exact_pair.rotated_gradient(g.float(), x.float()).reshape(-1)
        fp32_top = set(top_k(fp32.abs(), self.k).tolist())
        exact = (exact_pair.left.double().t() @ (g.double().t() @ x.double()) @ exact_pair.right.double()).reshape(-1)
        largest = exact.abs().topk(self.k).values
        ROWS.append((len(set(kept.tolist()) - fp32_top) / self.k, (exact.abs()[kept].min() / largest.min()).item(),
                     (exact[kept].pow(2).sum() / largest.pow(2).sum()).item()))
        return out
    return grad


def main() -> None:
    rotations.GramAccumulator.basis = keep_fp32(rotations.GramAccumulator.basis)
    sparse_linear.TopKGradLinear.weight_grad = compare(sparse_linear.TopKGradLinear.weight_grad)
    from ftbench.cli import main as ftbench

    sys.argv = ["ftbench", "method=sparsegrad", "method.rotation_dtype=bfloat16", *sys.argv[1:]]
    try:
        ftbench()
    finally:
        if ROWS:
            differ, low, held = zip(*ROWS)
            print(f"{len(ROWS)} layer-steps: kept entries not in the fp32 top-k {100 * sum(differ) / len(differ):.2f} % "
                  f"on average, {100 * max(differ):.2f} % at most; smallest kept magnitude {min(low):.4f} x the "
                  f"exact k-th; kept share of the exact top-k's squared sum at least {min(held):.6f}")


if __name__ == "__main__":
    main()
