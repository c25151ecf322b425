"""A finished `make bench-peers` run's rounds, each row's ratio per round taken both ways: the median of
the step-by-step ratios (what the benchmark reports, rounds.py) beside the ratio of the two sides' median
step times (what runs 1–6 of docs/results/peers.md reported). Reads the processes' own files under OUT/runs.

    PYTHONPATH=src python scripts/peers_step_ratios.py OUT                # OUT: the benchmark's --out folder

Prints, per method and peer, both ratios for every round, then their means.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ftbench.bench.peers.rounds import step_ratio


def rounds(out: Path) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(method, peer) -> [(median of step ratios, ratio of medians)] in round order."""
    found: dict[tuple[str, str], list[tuple[float, float]]] = {}
    folders = sorted(out.glob("runs/time*-*"), key=lambda f: int(f.name[4:].split("-", 1)[0]))
    for folder in folders:
        method = folder.name.split("-", 1)[1]
        ours = json.loads((folder / "result.json").read_text())["throughput"]["step_times_s"]
        for peer in json.loads((folder / "peers.json").read_text()):
            theirs = peer["step_times_s"]
            if ours and theirs:
                found.setdefault((method, peer["peer"]), []).append(
                    (step_ratio(ours, theirs), statistics.median(ours) / statistics.median(theirs)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print("| method | peer | median of step ratios, by round | mean | ratio of medians, by round | mean |")
    print("|---|---|---|---|---|---|")
    for (method, peer), values in rounds(args.out).items():
        paired, medians = zip(*values)
        print(f"| {method} | {peer} | {' '.join(f'{v:.2f}' for v in paired)} | {statistics.fmean(paired):.3f} "
              f"| {' '.join(f'{v:.2f}' for v in medians)} | {statistics.fmean(medians):.3f} |")


if __name__ == "__main__":
    main()
