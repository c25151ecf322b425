"""ftbench's methods beside the implementations a user would pick instead, in one run.

    make bench-peers                                              # the CPU shape below, every method
    python -m ftbench.bench.peers.timing --methods full lora --max-rounds 4
    python -m ftbench.bench.peers.timing model=llama2-7b profile.seq_len=512   # a GPU: the 7B shape (bf16, checkpointing)

Both sides train the same random-init model (shape, seed, dtype, checkpointing)
on the same batches with the same optimizer settings, the same warm-up and timed
steps, and the same measurements (see loop.py).

Pairs: each method beside its own peer (peers/__init__.py: full vs torch, lora
vs peft, and the methods of the packages those peers are) and beside the
baselines, torch and peft (its cost against full fine-tuning and LoRA;
`--baselines torch` keeps only the first, `--baselines` none).

- Memory, first: every entry (ftbench's method, a peer) once in a process of
  its own (ftbench through its CLI, a peer through `loop.py`): on a GPU CUDA's
  allocated peak of `profile.steps` steps, on the CPU the traced peak of
  `--memory-steps` traced steps after the same warm-up (the tracer slows every
  operator, so these runs are never timed). An entry that fails here is not
  timed; its row shows the error.
- Time: rounds. A round runs, for every method, one process in which ftbench's
  run and its peers alternate step by step (paired.py), the methods in reverse
  order on odd rounds. A row's ratio in a round is the median over the timed
  steps of ftbench's step over the peer's step of the same turn (rounds.py);
  the row's ratio is the mean over rounds, with the half-width of its 95 %
  confidence interval; rounds go on until every half-width is at most
  `--half-width` or `--max-rounds` ran (rounds.py). A step time in the table
  is the median over rounds. The table is rewritten after every round.

ftbench runs with `train.loss_chunk_tokens=null` (the model's own loss, as the
peers compute it), each method with its schema's `short_setup` (SparseGrad
calibrates its rotations on 2 batches instead of 11: setup only, the step is
the same), and a method beside its own peer with the peer's `matching`
overrides (BAdam's order pinned: see badam_block.py). Writes peers.json and
peers.md under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from ftbench.bench.peers import PEERS, paired
from ftbench.bench.peers.records import brief, last_line, peer_record, read_ftbench, read_peer
from ftbench.bench.peers.rounds import HALF_WIDTH, MAX_ROUNDS, Rounds
from ftbench.bench.peers.table import (
    BASELINES,
    MEMORY_LIMIT,
    OWN_PEER,
    TIME_LIMIT,
    pairs,
    peers_of,
    table,
)
from ftbench.config.knobs import settle
from ftbench.config.schema import check
from ftbench.config.tree import config_dir
from ftbench.errors import UserError, explain_compose_error
from ftbench.job.compose import register_configs
from ftbench.methods import config_classes, names

# The CPU shape: a 4-layer LLaMA of hidden 512, 4 x 256 tokens, fp32, checkpointing. Each key applies
# unless the command line sets it.
# 3 + 15 steps: in one process a step's first few are slow, and a median of 15 varies ~1 % (docs/peers.md).
DEFAULTS = ["model=llama-mini", "profile.batch_size=4", "profile.seq_len=256", "profile.warmup_steps=3",
            "profile.steps=15", "hardware.gradient_checkpointing=true"]
# What makes ftbench's run comparable with a plain loop (a command-line value of the same key wins).
# hardware.max_micro_batch_size=null: the whole profile batch in one micro-batch on both sides, no probe steps.
FIXED = ["mode=profile", "model.random_init=true", "train.loss_chunk_tokens=null", "train.progress=false",
         "hardware.max_micro_batch_size=null"]
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def with_defaults(overrides: list[str], defaults: list[str]) -> list[str]:
    """`defaults` whose key the command line does not set, then the command line."""
    given = {_key(o) for o in overrides}
    return [d for d in defaults if _key(d) not in given] + overrides


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    check(cfg)
    return cfg


def all_methods() -> list[str]:
    """Every registered method, those with a peer of their own first (in the peers' order)."""
    return [*OWN_PEER, *(m for m in names() if m not in OWN_PEER)]


def pinned(method: str) -> list[str]:
    """What ftbench's run of `method` adds to its defaults here: its schema's short setup
    (methods/config.py), and the overrides that make it run as its own peer does."""
    own = OWN_PEER.get(method)
    schema = config_classes().get(method)  # None: no such method, which composing the run then says
    return [*(schema.short_setup if schema else ()), *(PEERS[own].matching if own else ())]


class Benchmark:
    """The entries of one benchmark run and how to launch each."""

    def __init__(self, methods: list[str], overrides: list[str], out: Path, memory_steps: int, timeout: int,
                 baselines: tuple[str, ...] = BASELINES):
        from ftbench.engine.hardware import (  # torch: only once a benchmark runs
            resolve,
            split_batch,
        )

        self.out, self.memory_steps, self.timeout, self.methods = out, memory_steps, timeout, methods
        self.baselines = baselines
        self.overrides = with_defaults(with_defaults(overrides, FIXED), DEFAULTS)
        self.cfgs = {m: compose([*self.overrides, f"method={m}", *pinned(m)]) for m in methods}
        self.peers = list(dict.fromkeys(p for m in methods for p in peers_of(m, baselines)))
        for peer in self.peers:  # a peer copies the settings of its ftbench counterpart
            counterpart = PEERS[peer].method
            if counterpart not in self.cfgs:
                self.cfgs[counterpart] = compose([*self.overrides, f"method={counterpart}", *pinned(counterpart)])
        cfg = next(iter(self.cfgs.values()))
        objective = cfg.profile.objective
        if cfg.model.kind != "decoder" or objective == "seq_cls" or cfg.optim.name != "adamw":
            raise UserError("model", "the peers train causal LMs with AdamW; use a decoder model (model=llama-mini, "
                            "llama2-7b, ...), profile.objective=auto and optim.name=adamw")
        self.cfg = cfg
        self.hw = resolve(cfg.hardware)
        self.micro, self.accumulation = split_batch(cfg.profile.batch_size, self.hw.max_micro_batch_size)
        self.cuda = self.hw.device.type == "cuda"
        self.entries = [*(("ftbench", m) for m in methods), *(("peer", p) for p in self.peers)]

    # -- launching ------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        src = str(Path(__file__).resolve().parents[3])  # this checkout's ftbench, also in the children
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": src + (os.pathsep + path if path else ""), "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}

    def ftbench_overrides(self, method: str, steps: int, trace: bool) -> list[str]:
        return [*self.overrides, f"method={method}", *pinned(method), f"profile.steps={steps}",
                f"profile.trace_memory={str(trace).lower()}"]

    def run(self, entry: tuple[str, str], trace: bool, tag: str) -> dict:
        """One entry in a process of its own (the memory runs); its record."""
        kind, name = entry
        folder = self.out / "runs" / f"{tag}-{kind}-{name}"
        steps = self.memory_steps if trace else self.cfg.profile.steps
        if kind == "ftbench":
            command = [sys.executable, "-c", "from ftbench.cli import main; main()",
                       *self.ftbench_overrides(name, steps, trace), f"hydra.run.dir={folder}"]
        else:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "spec.json").write_text(json.dumps(self.spec(name, trace, steps), indent=1))
            command = [sys.executable, "-m", "ftbench.bench.peers.loop", str(folder / "spec.json"),
                       str(folder / "peer.json")]
        started = time.time()
        failure = self.launch(command)
        folder.mkdir(parents=True, exist_ok=True)
        record = read_ftbench(folder) if kind == "ftbench" else read_peer(folder)
        if record["status"] != "ok" and not record["error"]:
            record["error"] = failure or "no result written"
        record["wall_s"] = round(time.time() - started, 1)
        print(f"  {tag:>8} {kind:>7} {name:<11} {brief(record)}", flush=True)
        return record

    def pair(self, method: str, peers: list[str], tag: str) -> dict:
        """`method` and `peers` stepped in turn in one process (paired.py): {"ftbench": record, peer: record}."""
        folder = self.out / "runs" / f"{tag}-{method}"
        folder.mkdir(parents=True, exist_ok=True)
        steps = self.cfg.profile.steps
        spec = {"overrides": self.ftbench_overrides(method, steps, trace=False), "folder": str(folder),
                "peers": [self.spec(peer, False, steps) for peer in peers]}
        (folder / "pair.json").write_text(json.dumps(spec, indent=1))
        started = time.time()
        failure = self.launch([sys.executable, "-m", "ftbench.bench.peers.paired", str(folder / "pair.json")])
        records = {"ftbench": read_ftbench(folder)}
        try:
            measured = {p["peer"]: p for p in json.loads((folder / paired.FILENAME).read_text())}
        except (OSError, ValueError):
            measured = {}
        for peer in peers:
            records[peer] = peer_record(measured.get(peer, {"status": "failed"}))
        wall = round(time.time() - started, 1)
        for side, record in records.items():
            if record["status"] != "ok" and not record["error"]:
                record["error"] = failure or "no result written"
            record["wall_s"] = wall
            print(f"  {tag:>8} {'ftbench' if side == 'ftbench' else 'peer':>7} "
                  f"{method if side == 'ftbench' else side:<11} {brief(record)}", flush=True)
        return records

    def launch(self, command: list[str]) -> str | None:
        """Run `command` to its end; None, or the last line of its stderr when it failed."""
        try:
            done = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=self.timeout)
            return last_line(done.stderr) if done.returncode else None
        except subprocess.TimeoutExpired:
            return f"timed out after {self.timeout} s"

    def spec(self, peer: str, trace: bool, steps: int) -> dict:
        from omegaconf import OmegaConf

        module, cfg = PEERS[peer].module, self.cfgs[PEERS[peer].method]
        total = cfg.profile.warmup_steps + steps
        warmup = cfg.optim.warmup_steps if cfg.optim.warmup_steps is not None else math.ceil(
            cfg.optim.warmup_ratio * total)
        return {"peer": peer, "module": module, "seed": cfg.seed, "device": str(self.hw.device),
                "precision": self.hw.precision, "allow_tf32": cfg.hardware.allow_tf32,
                "gradient_checkpointing": self.hw.gradient_checkpointing,
                "attn_implementation": self.hw.attn_implementation,
                "shape": OmegaConf.to_container(cfg.model.shape), "micro_batch_size": self.micro,
                "accumulation": self.accumulation, "seq_len": cfg.profile.seq_len,
                "warmup_steps": cfg.profile.warmup_steps, "steps": steps, "trace_memory": trace,
                "lr": settle(cfg).lr, "betas": list(cfg.optim.betas),
                "eps": cfg.optim.eps, "weight_decay": cfg.optim.weight_decay,
                "max_grad_norm": cfg.optim.max_grad_norm, "scheduler": SCHEDULERS[cfg.optim.scheduler],
                "scheduler_warmup_steps": warmup, "method": OmegaConf.to_container(cfg.method, resolve=True)}


def measure(bench: Benchmark, stop, report) -> dict[str, dict]:
    """Every entry's summary (summarize), after the memory runs and timed rounds until `stop(summary,
    rounds)`; `report(summary, rounds)` is called after each round, so a run stopped early leaves its table."""
    memory = {entry: bench.run(entry, trace=not bench.cuda, tag="memory") for entry in bench.entries}
    runs: dict[str, list[dict]] = {m: [] for m in bench.methods}
    round_ = 0
    while True:
        for m in bench.methods if round_ % 2 == 0 else bench.methods[::-1]:
            if memory[("ftbench", m)]["status"] == "ok":
                runs[m].append(bench.pair(m, peers_beside(bench, m, memory), tag=f"time{round_}"))
        summary = summarize(runs, memory)
        round_ += 1
        report(summary, round_)
        if stop(summary, round_):
            return summary


def peers_beside(bench, method: str, memory: dict[tuple[str, str], dict]) -> list[str]:
    """The peers timed beside `method`: its own and the baselines (table.peers_of), those whose memory run ran."""
    return [p for p in peers_of(method, bench.baselines) if memory[("peer", p)]["status"] == "ok"]


def summarize(runs: dict[str, list[dict]], memory: dict[tuple[str, str], dict]) -> dict[str, dict]:
    """`ftbench:<method>` and `peer:<peer>` (each entry: its memory run, and for a method its times), and
    `peer:<peer>@<method>` (that peer's times beside that method). Step times: medians over the rounds."""
    summary = {":".join(entry): _entry(record, []) for entry, record in memory.items()}
    for m, rounds in runs.items():
        summary[f"ftbench:{m}"] = _entry(memory[("ftbench", m)], [r["ftbench"] for r in rounds])
        for peer in dict.fromkeys(p for r in rounds for p in r if p != "ftbench"):
            summary[f"peer:{peer}@{m}"] = _entry(memory[("peer", peer)], [r.get(peer) for r in rounds])
    return summary


def _entry(memory: dict, timed: list[dict | None]) -> dict:
    """An entry from its memory run (status, peak) and its timed runs (one per round; None: not run then)."""
    ok = [r for r in timed if r is not None and r["status"] == "ok"]
    failed = next((r for r in timed if r is not None and r["status"] != "ok"), None)
    first = ok[0] if ok else memory
    status, error = (memory["status"], memory["error"]) if memory["status"] != "ok" or failed is None \
        else (failed["status"], failed["error"])
    return {"status": status, "error": error,
            "step_time_s": statistics.median([r["step_time_s"] for r in ok]) if ok else None,
            "step_times_rounds_s": [r["step_times_s"] if r is not None and r["status"] == "ok" else None
                                    for r in timed],
            "peak_bytes": memory["peak_bytes"], "trainable": first["trainable"] or memory["trainable"],
            "loss_first": first["loss_first"], "loss_last": first["loss_last"],
            "package": first["package"] or memory["package"]}


def machine(bench: Benchmark) -> str:
    import peft
    import torch
    import transformers

    if bench.cuda:
        name = torch.cuda.get_device_name(bench.hw.device)
    else:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
            else platform.processor()
        name = f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return (f"{name}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m ftbench.bench.peers.timing", description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="ftbench overrides: the shape, hardware, profile steps")
    parser.add_argument("--methods", nargs="+", default=None, help="ftbench methods (default: every one)")
    parser.add_argument("--max-rounds", type=int, default=MAX_ROUNDS, help="timed rounds at most (a round: one paired process per method)")
    parser.add_argument("--half-width", type=float, default=HALF_WIDTH,
                        help="rounds go on until every time ratio's 95 %% CI half-width is at most this")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES,
                        help="the peers every method also stands beside (default: torch peft; none: only its own)")
    parser.add_argument("--memory-steps", type=int, default=1, help="CPU: traced steps of the memory run")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/bench-peers/<time>")
    args = parser.parse_args(argv)
    methods = args.methods or all_methods()
    out = args.out or Path("outputs/bench-peers") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        bench = Benchmark(methods, args.overrides, out, args.memory_steps, args.timeout, tuple(args.baselines))
    except (UserError, HydraException, OmegaConfBaseException) as exc:
        problem = exc if isinstance(exc, UserError) else explain_compose_error(exc)
        print(f"bench-peers: error: {problem}", file=sys.stderr)
        sys.exit(2)
    baselines = [] if tuple(args.baselines) == BASELINES else ["--baselines", *args.baselines]
    command = "python -m ftbench.bench.peers.timing " + " ".join([*(["--methods", *args.methods] if args.methods else []),
                                                           *baselines,
                                                           f"--max-rounds {args.max_rounds}",
                                                           f"--half-width {args.half_width}", *args.overrides])
    rule = Rounds(args.max_rounds, args.half_width)
    print(f"bench-peers: {len(bench.entries)} memory runs ({'CUDA peak' if bench.cuda else 'traced'}), then "
          f"{len(methods)} paired processes x 2-{args.max_rounds} rounds (until every time ratio's 95 % "
          f"CI half-width <= {args.half_width}); writing {out}", flush=True)
    final = {}

    def report(summary: dict[str, dict], rounds: int) -> None:
        rows = pairs(methods, summary, bench.baselines)
        final.update({
            "command": command.strip(), "machine": machine(bench),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "overrides": bench.overrides,
            "device": str(bench.hw.device), "precision": bench.hw.precision,
            "gradient_checkpointing": bench.hw.gradient_checkpointing, "rounds": rounds,
            "half_width": args.half_width, "max_rounds": args.max_rounds,
            "memory": "cuda allocated peak" if bench.cuda else f"traced peak, {args.memory_steps} traced steps",
            "duration_s": round(time.time() - started, 1), "entries": summary, "rows": rows,
        })
        differ = [f"{r['method']}/{r['peer']}" for r in rows if r.get("same_first_loss") is False]
        drift = [f"{r['method']}/{r['peer']}" for r in rows if r.get("same_last_loss") is False]
        done = "" if rule.done([r["time_spread"] for r in rows], rounds) else " (so far: the run goes on)"
        text = (f"`{final['command']}`  \n{final['machine']}  \n{bench.hw.precision}, checkpointing "
                f"{'on' if bench.hw.gradient_checkpointing else 'off'}; {' '.join(bench.overrides)}; time ×: mean over "
                f"{rounds} rounds{done} of each round's ratio (the median over its steps of ftbench's step / the peer's "
                f"step of the same turn, before it, in one process), ± the half-width "
                f"of its 95 % confidence interval (lowest–highest round); step times: medians over the rounds; "
                f"memory: {final['memory']}; "
                f"{final['duration_s'] / 60:.1f} min\n\n{table(rows)}\n\n"
                f"× = ftbench / peer; ⚠ = over {TIME_LIMIT} × time or {MEMORY_LIMIT} × memory against its own "
                f"peer; (baseline) rows give a method's cost against full fine-tuning and LoRA. First-step loss "
                + (f"differs (not the same model or batch): {', '.join(differ)}" if differ
                   else "identical on both sides of every row (the same model and batches)")
                + "; last-step loss against its own peer (the weights after the steps before it) "
                + (f"differs: {', '.join(drift)}" if drift else "the same in every own-peer row") + ".\n")
        (out / "peers.json").write_text(json.dumps(final, indent=1))
        (out / "peers.md").write_text(text)
        print(text, flush=True)

    def stop(summary: dict[str, dict], rounds: int) -> bool:
        return rule.done([r["time_spread"] for r in pairs(methods, summary, bench.baselines)], rounds)

    measure(bench, stop, report)
    print(f"wrote {out / 'peers.md'}")
    return final


if __name__ == "__main__":
    main()
