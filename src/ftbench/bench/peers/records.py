"""What a benchmark run left behind, read as one record: ftbench's result.json or a peer's peer.json.

A record: status, error, the median step time (s) and each measured step's time in order (s), the peak
(bytes), the trainable count, the first and last step's loss, the peer's package.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftbench.bench.peers.table import MiB


def read_ftbench(folder: Path) -> dict:
    try:
        result = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return new_record("failed", None)
    memory, throughput = result.get("memory") or {}, result.get("throughput") or {}
    peak = memory.get("train_peak_allocated_bytes") or memory.get("train_peak_traced_bytes")
    return new_record(result["status"], result.get("error"), step_time=throughput.get("step_time_s_p50"),
                      step_times=throughput.get("step_times_s"), peak=peak,
                      trainable=(result.get("params") or {}).get("trainable"),
                      loss_first=(result.get("train") or {}).get("loss_first"),
                      loss_last=(result.get("train") or {}).get("loss_last"))


def read_peer(folder: Path) -> dict:
    try:
        result = json.loads((folder / "peer.json").read_text())
    except (OSError, ValueError):
        return new_record("failed", None)
    return peer_record(result)


def peer_record(result: dict) -> dict:
    """The record of a peer's measurements (loop.py's peer.json, or one entry of paired.py's peers.json)."""
    return new_record(result["status"], result.get("error"), step_time=result.get("step_time_s_p50"),
                      step_times=result.get("step_times_s"), peak=result.get("peak_bytes"),
                      trainable=result.get("trainable"),
                      loss_first=result.get("loss_first"), loss_last=result.get("loss_last"),
                      package=result.get("package"))


def new_record(status, error, step_time=None, step_times=None, peak=None, trainable=None, loss_first=None,
               loss_last=None, package=None) -> dict:
    return {"status": status, "error": error, "step_time_s": step_time, "step_times_s": step_times, "peak_bytes": peak,
            "trainable": trainable, "loss_first": loss_first, "loss_last": loss_last, "package": package}


def last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def brief(record: dict) -> str:
    if record["status"] != "ok":
        return f"{record['status']}: {record['error']}"
    parts = [f"{record['wall_s']:.0f} s wall"]
    if record["step_time_s"] is not None:
        parts.insert(0, f"step {record['step_time_s']:.3f} s")
    if record["peak_bytes"] is not None:
        parts.insert(1, f"peak {record['peak_bytes'] / MiB:.1f} MiB")
    return ", ".join(parts)
