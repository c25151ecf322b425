"""A weight gradient at selected entries only: a sampled dense-dense product (SDDMM).

Entry (i, j) of the weight gradient gᵀx is the dot product of column i of the output
gradient g (tokens × d_out) and column j of the input x (tokens × d_in) over the
tokens. For k selected entries that is tokens·k multiply-adds, against the dense
GEMM's tokens·d_out·d_in: SIFT (rate 0.01) needs about 1 % of it.

`sampled_entries` runs `torch.sparse.sampled_addmm` on the selection as a CSR
pattern, over `TOKEN_CHUNKS` chunks of tokens, summing into fp32 values. The kernel's dot
products run over tokens, so each chunk of g and of x is first copied token-contiguous,
(d × chunk) in fp32 (`token_major`): on a CPU those transposes, not the products, are most
of the path's time, so they go through torch's channels-last conversion (fastest of the ways
tried at llama-mini's shapes, by the minimum of 200 calls: a 256 × 1376 chunk 0.11 ms against
0.40-0.50 for `.t().contiguous()`, 256 × 512 0.08 against 0.11; 2-core CPU,
2026-12-04; at the step, SIFT's ratio in `make bench-peers` did not move beyond its noise). The
transient is those two copies: a quarter of the layer's g and x in fp32 (half of them in bf16),
which are alive anyway. A fixed number of chunks keeps the step's operators the same at every
batch size, as the planner's probes need (docs/planner.md); at the LLaMA2-7B shape (2048 tokens)
a chunk holds 31 MB, the dense path's 32 MiB rows of the weight gradient.
bf16 and fp16 inputs are widened per chunk (the CPU kernel takes fp32 and wider only);
the sums are therefore closer to the exact value than a bf16 GEMM's.

`choose` is the cost model: a sampled entry-token costs `SAMPLED_COST[device]` times
a dense GEMM multiply-add (memory-bound gathers against a compute-bound GEMM), so the
sampled product wins while k · SAMPLED_COST < d_out · d_in, i.e. below a selected
fraction of 1 / SAMPLED_COST; the token count cancels, so the choice is fixed per
layer when its selection is. Sources of the constants:
- cpu: llama-mini's MLP shapes (1376 × 512, 512 × 1376, 1024 tokens, fp32, 2 cores):
  the chunked sampled product at rate 0.01 took 0.3-0.5 of the dense GEMM and its
  gather (a machine shared with other jobs: a rough figure), i.e. 30-50 per entry;
- cuda: not measured yet (no GPU run); 100 assumes a bf16 tensor-core GEMM is about
  that many times faster per multiply-add than cuSPARSE's SDDMM, so SIFT's rate 0.01
  keeps the dense path until `make gpu-check` (which times both) says otherwise.
"""

from __future__ import annotations

import warnings

import torch

# torch says so on the first CSR tensor of a process; the CSR here is an input format only.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

SAMPLED_COST = {"cpu": 40.0, "cuda": 100.0}
TOKEN_CHUNKS = 4
PATHS = ("sampled", "dense")


def choose(d_out: int, d_in: int, k: int, device: torch.device) -> str:
    """'sampled' when k sampled entries cost less than the dense d_out × d_in product on `device`, else 'dense'."""
    cost = SAMPLED_COST.get(device.type, SAMPLED_COST["cuda"])
    return "sampled" if k * cost < d_out * d_in else "dense"


def csr_pattern(flat: torch.Tensor, d_out: int, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(crow_indices, col_indices) of sorted, unique flat positions in a d_out × d_in matrix, in flat's dtype."""
    starts = torch.arange(d_out + 1, device=flat.device, dtype=torch.long) * d_in
    crow = torch.searchsorted(flat, starts.to(flat.dtype), out_int32=flat.dtype == torch.int32)
    return crow, flat % d_in


def sampled_entries(g: torch.Tensor, x: torch.Tensor, flat: torch.Tensor, chunks: int = TOKEN_CHUNKS) -> torch.Tensor:
    """(gᵀx) at the sorted, unique flat positions `flat` (k, fp32 or wider) for g (tokens × d_out)
    and x (tokens × d_in), summed over `chunks` chunks of tokens (the last ones empty when there are
    fewer tokens than chunks)."""
    d_out, d_in = g.shape[1], x.shape[1]
    crow, col = csr_pattern(flat, d_out, d_in)
    dtype = torch.promote_types(g.dtype, torch.float32)
    values = torch.zeros(flat.numel(), dtype=dtype, device=g.device)
    pattern = torch.sparse_csr_tensor(crow, col, values, (d_out, d_in), check_invariants=False)
    for g_chunk, x_chunk in zip(g.tensor_split(chunks), x.tensor_split(chunks)):
        # the kernel takes its second operand as (tokens × d_in) and reads it transposed: the .t() of a
        # token-major copy is that transpose already, so the kernel makes no copy of its own
        x_t = token_major(x_chunk, dtype).t()
        pattern = torch.sparse.sampled_addmm(pattern, token_major(g_chunk, dtype), x_t)
    return pattern.values()


def token_major(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous (d × n) copy in `dtype` of `rows` (n × d): its transpose. On a CPU through torch's
    channels-last conversion of `rows` seen as an image (1, n, d, 1) with n channels: the same bytes as
    `.t().contiguous()`, measured faster (module docstring)."""
    rows = rows.to(dtype)
    n, d = rows.shape
    if rows.device.type != "cpu" or not rows.is_contiguous():
        return rows.t().contiguous()
    return rows.view(1, n, d, 1).contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).view(d, n)
