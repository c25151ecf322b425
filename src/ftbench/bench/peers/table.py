"""The peers benchmark's rows and table: each ftbench method beside its own peer (or the baselines).

A row holds both sides' summaries (timing.py's `summarize`), the time ratio (mean over rounds of each
round's ftbench / peer ratio, both timed step by step in one process: paired.py; the ratio and its spread:
rounds.py) and the memory ratio; `table` renders the rows as markdown with ⚠ where an own-peer row is over
TIME_LIMIT or MEMORY_LIMIT.
"""

from __future__ import annotations

import math

from ftbench.bench.peers import PEERS
from ftbench.bench.peers.rounds import round_ratios, spread

OWN_PEER = {peer.method: name for name, peer in PEERS.items()}  # method -> the peer it stands beside
BASELINES = ("torch", "peft")  # what every method also stands beside (--baselines): full fine-tuning and LoRA
TIME_LIMIT, MEMORY_LIMIT = 1.05, 1.02  # acceptance: ftbench / peer, own-peer rows
MiB = 2**20


def peers_of(method: str, baselines: tuple[str, ...] = BASELINES) -> list[str]:
    """The peers `method` stands beside: its own (if it has one), then the baselines."""
    own = OWN_PEER.get(method)
    return [*([own] if own else []), *(p for p in baselines if p != own)]


def pairs(methods: list[str], summary: dict[str, dict], baselines: tuple[str, ...] = BASELINES) -> list[dict]:
    """One row per (ftbench method, peer) with the ratios ftbench / peer."""
    rows = []
    for m in methods:
        own = OWN_PEER.get(m)
        for peer in peers_of(m, baselines):
            # the peer as timed beside this method (paired.py), or as its own run left it (it did not run)
            a, b = summary[f"ftbench:{m}"], summary.get(f"peer:{peer}@{m}", summary[f"peer:{peer}"])
            ratios = round_ratios(a["step_times_rounds_s"], b["step_times_rounds_s"])
            time_spread = spread(ratios) if ratios else None
            row = {"method": m, "peer": peer, "own_peer": peer == own, "ftbench": a, "peer_result": b,
                   "time_ratio": time_spread["mean"] if time_spread else None, "time_spread": time_spread,
                   "memory_ratio": _ratio(a["peak_bytes"], b["peak_bytes"])}
            if peer == own and row["time_ratio"] is not None and row["memory_ratio"] is not None:
                row["within_limits"] = row["time_ratio"] <= TIME_LIMIT and row["memory_ratio"] <= MEMORY_LIMIT
            if a["loss_first"] is not None and b["loss_first"] is not None:  # same model, same batch
                row["same_first_loss"] = math.isclose(a["loss_first"], b["loss_first"], rel_tol=1e-4)
            if peer == own and a.get("loss_last") is not None and b.get("loss_last") is not None:
                # the last step's loss is the weights after all the steps before it: the same library stepping
                # the same tensors gives the same (to the rounding of a differently ordered gradient norm)
                row["same_last_loss"] = math.isclose(a["loss_last"], b["loss_last"], rel_tol=1e-4)
            rows.append(row)
    return rows


def _ratio(a, b):
    return a / b if a is not None and b else None


def table(rows: list[dict]) -> str:
    head = ("| ftbench | peer | step s ftbench | step s peer | time × | peak MiB ftbench | peak MiB peer | memory × "
            "| trainable ftbench | trainable peer |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for row in rows:
        a, b = row["ftbench"], row["peer_result"]
        peer = PEERS[row["peer"]].what + ("" if row["own_peer"] else " (baseline)")
        if b["status"] != "ok" or a["status"] != "ok":
            failed = [(side, r) for side, r in (("ftbench", a), ("peer", b)) if r["status"] != "ok"]
            why = "; ".join(f"{side} did not run: {r['error']}" for side, r in failed)
            lines.append(f"| {row['method']} | {peer} | {_num(a['step_time_s'])} | — | — | {_mib(a['peak_bytes'])} "
                         f"| — | — | {_int(a['trainable'])} | {why} |")
            continue
        over_time = row["own_peer"] and row["time_ratio"] > TIME_LIMIT
        over_memory = row["own_peer"] and row["memory_ratio"] is not None and row["memory_ratio"] > MEMORY_LIMIT
        lines.append(f"| {row['method']} | {peer} | {_num(a['step_time_s'])} | {_num(b['step_time_s'])} "
                     f"| {_num(row['time_ratio'], 2)}{_pm(row['time_spread'])}{' ⚠' if over_time else ''} "
                     f"| {_mib(a['peak_bytes'])} "
                     f"| {_mib(b['peak_bytes'])} | {_num(row['memory_ratio'], 3)}{' ⚠' if over_memory else ''} "
                     f"| {_int(a['trainable'])} | {_int(b['trainable'])} |")
    return "\n".join(lines)


def _pm(time_spread: dict | None) -> str:
    """' ± half-width (low–high)' of a ratio measured in two rounds or more."""
    if time_spread is None or time_spread["half_width"] is None:
        return ""
    return f" ± {time_spread['half_width']:.3f} ({time_spread['low']:.2f}–{time_spread['high']:.2f})"


def _num(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _mib(x) -> str:
    return "—" if x is None else f"{x / MiB:.1f}"


def _int(x) -> str:
    return "—" if x is None else f"{x:,}"
