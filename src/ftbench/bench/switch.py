"""Switch time: fuse/unfuse of an S2FT adapter against PEFT LoRA merge/unmerge, on the same layer sizes.

    python -m ftbench.bench.switch                                 # CPU, fp32, d = 1024 2048 4096
    python -m ftbench.bench.switch --device cuda --dtype bf16      # the GPU figure
    python -m ftbench.bench.switch --sizes 4096 --k 64 --threads 1 --out outputs/switch.json

Parameter parity as in the paper's micro-benchmark (§6.2): an S2FT slice of k rows or
columns of a d × d weight (k·d values) against LoRA of rank r = k/2 (2·r·d values).
S2FT switches by copying k rows (or columns) into place, from the adapter's tuned or
base values (s2ft_adapter.fuse/unfuse); LoRA merges by forming B·A (d × d) and adding
it, and unmerges by subtracting it again (PEFT's merge/unmerge). Times are medians over
--repeats synchronized switches after a warm-up. Prints a table and writes a JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ftbench.methods.s2ft import adapter as s2ft_adapter

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - started


def _paired(first: Callable[[], None], second: Callable[[], None], repeats: int,
            device: torch.device) -> tuple[float, float]:
    """Median milliseconds of two switches that undo each other, timed alternately (the state stays valid)."""
    for _ in range(3):  # warm-up
        first()
        second()
    times = [(_seconds(first, device), _seconds(second, device)) for _ in range(repeats)]
    return tuple(1e3 * statistics.median(column) for column in zip(*times))


def s2ft_switch(d: int, k: int, kind: str, dtype: torch.dtype, device: torch.device,
                repeats: int) -> tuple[float, float]:
    model = nn.ModuleDict({"layer": nn.Linear(d, d, bias=False)}).to(device, dtype).requires_grad_(False)
    dim = s2ft_adapter.KIND_DIM[kind]
    index = torch.randperm(d, device=device)[:k].sort().values
    base = s2ft_adapter.capture(model, {"layer.weight": (dim, index)})
    tuned = {n: s2ft_adapter.Slice(s.dim, s.index, s.base, s.base + 0.01) for n, s in base.items()}
    adapter = s2ft_adapter.to(tuned, device)
    return _paired(lambda: s2ft_adapter.fuse(model, adapter), lambda: s2ft_adapter.unfuse(model, adapter),
                   repeats, device)


def lora_switch(d: int, r: int, dtype: torch.dtype, device: torch.device, repeats: int) -> tuple[float, float]:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model = nn.Sequential(nn.Linear(d, d, bias=False))
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"]))
    peft_model.to(device, dtype).requires_grad_(False)
    layer = next(m for m in peft_model.modules() if isinstance(m, LoraLayer))
    nn.init.normal_(layer.lora_B["default"].weight, std=0.01)  # B starts at zero; merge cost is the same
    return _paired(layer.merge, layer.unmerge, repeats, device)


def benchmark(sizes: list[int], k: int, rank: int, dtype: torch.dtype, device: torch.device,
              repeats: int) -> list[dict]:
    rows = []
    for d in sizes:
        fuse_rows, unfuse_rows = s2ft_switch(d, k, "rows", dtype, device, repeats)
        fuse_cols, unfuse_cols = s2ft_switch(d, k, "cols", dtype, device, repeats)
        merge, unmerge = lora_switch(d, rank, dtype, device, repeats)
        rows.append({
            "d": d, "s2ft_k": k, "lora_r": rank, "s2ft_params": k * d, "lora_params": 2 * rank * d,
            "s2ft_fuse_rows_ms": fuse_rows, "s2ft_unfuse_rows_ms": unfuse_rows,
            "s2ft_fuse_cols_ms": fuse_cols, "s2ft_unfuse_cols_ms": unfuse_cols,
            "lora_merge_ms": merge, "lora_unmerge_ms": unmerge,
            "speedup_rows": (merge + unmerge) / (fuse_rows + unfuse_rows),
            "speedup_cols": (merge + unmerge) / (fuse_cols + unfuse_cols),
        })
    return rows


def table(rows: list[dict]) -> str:
    header = (f"{'d':>6} {'k':>4} {'r':>4} | {'fuse rows':>9} {'unfuse':>8} {'fuse cols':>9} {'unfuse':>8} | "
              f"{'merge':>8} {'unmerge':>8} | {'x rows':>6} {'x cols':>6}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['d']:>6} {row['s2ft_k']:>4} {row['lora_r']:>4} | {row['s2ft_fuse_rows_ms']:>9.4f} "
                     f"{row['s2ft_unfuse_rows_ms']:>8.4f} {row['s2ft_fuse_cols_ms']:>9.4f} "
                     f"{row['s2ft_unfuse_cols_ms']:>8.4f} | {row['lora_merge_ms']:>8.4f} "
                     f"{row['lora_unmerge_ms']:>8.4f} | {row['speedup_rows']:>6.1f} {row['speedup_cols']:>6.1f}")
    lines.append("times in ms (median); x = LoRA (merge + unmerge) / S2FT (fuse + unfuse)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m ftbench.bench.switch", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="square layer sizes d")
    parser.add_argument("--k", type=int, default=64, help="S2FT rows/columns per adapter (default: 64)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default: k/2, equal parameters)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20, help="timed switches per figure (median)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_switch.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank = args.rank or max(args.k // 2, 1)
    rows = benchmark(args.sizes, args.k, rank, DTYPES[args.dtype], device, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": name, "dtype": args.dtype, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "repeats": args.repeats, "rows": rows}
    print(f"S2FT switch vs PEFT LoRA merge on {name} ({args.dtype})")
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
