"""What the sparse methods' extra work costs per layer, at the `make bench-peers` CPU shape (llama-mini's
512 × 512 attention and 1376 × 512 MLP weights, 4 × 256 = 1024 tokens, fp32): the numbers behind the
floors in docs/results/peers.md ("What explains each ratio").

    PYTHONPATH=src python scripts/floor_costs.py

Prints milliseconds per call (the minimum of 30 calls after 3 warm-ups: the least disturbed) of
- SparseGrad's rotated gradient Lᵀ gᵀ x R (`Basis.rotated_gradient`), with an fp32 pair and with a bf16
  one (method.rotation_dtype), beside the plain gᵀ x that full fine-tuning and MeProp form, and its update
  L S Rᵀ (`Basis.unrotate_entries`, in fp32 either way);
- the exact top-k of an MLP gradient (`top_k`, SparseGrad's default density) beside a full `torch.topk`;
- SIFT's sampled entries (`sampled_entries`, rate 0.01) beside their two parts: the token-major copies of
  g and x, and the sampled products on copies made beforehand.
Time it alone: on 2 cores a second process doubles every figure.
"""

from __future__ import annotations

import time

import torch

from ftbench.methods.sampled_grad import TOKEN_CHUNKS, csr_pattern, sampled_entries, token_major
from ftbench.methods.sparsegrad.sparse_linear import Basis
from ftbench.methods.top_k import top_k

TOKENS, HIDDEN, INTERMEDIATE = 1024, 512, 1376
SPARSEGRAD_DENSITY, SIFT_RATE = 0.012, 0.01


def ms(call, repeats: int = 30) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=generator))[0]


def sparse_mlp(name: str, d_out: int, d_in: int, generator: torch.Generator) -> None:
    g, x = torch.randn(TOKENS, d_out, generator=generator), torch.randn(TOKENS, d_in, generator=generator)
    basis = Basis(orthogonal(d_out, generator), orthogonal(d_in, generator))
    bf16 = Basis(basis.left.bfloat16(), basis.right.bfloat16())  # method.rotation_dtype=bfloat16, the default
    k = round(SPARSEGRAD_DENSITY * d_out * d_in)
    rotated = basis.rotated_gradient(g, x).reshape(-1)
    flat = top_k(rotated.abs(), k)
    values = rotated.index_select(0, flat)
    rows = [("gᵀ x (full fine-tuning, MeProp)", lambda: g.t() @ x),
            ("Lᵀ gᵀ x R (SparseGrad, rotation_dtype=float32)", lambda: basis.rotated_gradient(g, x)),
            ("Lᵀ gᵀ x R (SparseGrad, rotation_dtype=bfloat16)", lambda: bf16.rotated_gradient(g, x)),
            ("L S Rᵀ, the update (float32)", lambda: basis.unrotate_entries(flat, values, (d_out, d_in))),
            ("L S Rᵀ, the update (bfloat16 pair, widened)", lambda: bf16.unrotate_entries(flat, values, (d_out, d_in))),
            (f"top-k, k = {k} (SparseGrad, MeProp)", lambda: top_k(rotated.abs(), k)),
            ("full torch.topk, the same k", lambda: rotated.abs().topk(k, sorted=False))]
    for what, call in rows:
        print(f"| {name} {d_out} × {d_in} | {what} | {ms(call):.2f} |")


def sift(name: str, d_out: int, d_in: int, generator: torch.Generator) -> None:
    g, x = torch.randn(TOKENS, d_out, generator=generator), torch.randn(TOKENS, d_in, generator=generator)
    k = int(SIFT_RATE * d_out * d_in) + 1
    flat = torch.randperm(d_out * d_in, generator=generator)[:k].sort().values
    crow, col = csr_pattern(flat, d_out, d_in)
    pattern = torch.sparse_csr_tensor(crow, col, torch.zeros(k), (d_out, d_in), check_invariants=False)
    chunks = list(zip(g.tensor_split(TOKEN_CHUNKS), x.tensor_split(TOKEN_CHUNKS)))

    def copies():
        return [(token_major(g_chunk, torch.float32), token_major(x_chunk, torch.float32).t())
                for g_chunk, x_chunk in chunks]

    made = copies()

    def products():
        values = pattern
        for g_t, x_t in made:
            values = torch.sparse.sampled_addmm(values, g_t, x_t)
        return values

    rows = [("sampled entries, rate 0.01 (SIFT)", lambda: sampled_entries(g, x, flat)),
            ("  its token-major copies of g and x", copies),
            ("  its sampled products", products),
            ("gᵀ x, the dense path", lambda: g.t() @ x)]
    for what, call in rows:
        print(f"| {name} {d_out} × {d_in} | {what} | {ms(call):.2f} |")


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    print("| layer | what | ms per call |\n|---|---|---|")
    sparse_mlp("gate/up", INTERMEDIATE, HIDDEN, generator)
    sparse_mlp("down", HIDDEN, INTERMEDIATE, generator)
    sift("q/k/v/o", HIDDEN, HIDDEN, generator)
    sift("gate/up", INTERMEDIATE, HIDDEN, generator)
    sift("down", HIDDEN, INTERMEDIATE, generator)


if __name__ == "__main__":
    main()
