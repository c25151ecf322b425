"""ftbench's methods beside the implementations a user would pick instead, in one run.

    make bench-peers                                              # the CPU shape below, every method
    python -m ftbench.bench.peers.timing --methods full lora --max-rounds 4
    python -m ftbench.bench.peers.timing model=llama2-7b profile.seq_len=512   # a GPU: the 7B shape (bf16, checkpointing)

Every entry runs in its own process: ftbench through its CLI (`ftbench
mode=profile method=M ...`, which writes result.json), a peer through
`loop.py` (plain PyTorch, PEFT, badam; peers/__init__.py lists them). Both
sides train the same random-init model (shape, seed, dtype, checkpointing) on
the same batches with the same optimizer settings, the same warm-up and timed
steps, and the same measurements (see loop.py).

Pairs: each method beside its own peer (peers/__init__.py: full vs torch, lora
vs peft, and the methods of the packages those peers are); every method
without a peer that runs is also set beside torch and peft (its cost against
full fine-tuning and LoRA).

- Time: rounds, each running every entry once with the tracer off; odd rounds
  run the entries in reverse order, so each pair runs ABBA and slow drifts of a
  shared machine fall on both sides. A row's time ratio is the mean over rounds
  of that round's ratio of the two runs' median step times, with the half-width
  of its 95 % confidence interval; rounds go on until every half-width is at
  most `--half-width` or `--max-rounds` ran (rounds.py). An entry's step time is
  the median over rounds of its runs' medians.
- Memory: on a GPU, CUDA's allocated peak of the same runs; on the CPU one more
  run per entry after the first round, with the tracer on (it slows every
  operator, so those runs are never timed), `--memory-steps` traced steps after
  the same warm-up. The table is rewritten after every round.

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

from ftbench.bench.peers import PEERS
from ftbench.bench.peers.rounds import HALF_WIDTH, MAX_ROUNDS, Rounds
from ftbench.bench.peers.table import (
    BASELINES,
    MEMORY_LIMIT,
    OWN_PEER,
    TIME_LIMIT,
    MiB,
    pairs,
    table,
)
from ftbench.config.knobs import settle
from ftbench.config.schema import check
from ftbench.errors import UserError, explain_compose_error
from ftbench.job.compose import config_dir, register_configs
from ftbench.methods import config_classes, names

# The CPU shape: a 4-layer LLaMA of hidden 512, 4 x 256 tokens, fp32, checkpointing. Each key applies
# unless the command line sets it.
DEFAULTS = ["model=llama-mini", "profile.batch_size=4", "profile.seq_len=256", "profile.warmup_steps=2",
            "profile.steps=5", "hardware.gradient_checkpointing=true"]
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

    def __init__(self, methods: list[str], overrides: list[str], out: Path, memory_steps: int, timeout: int):
        from ftbench.engine.hardware import (  # torch: only once a benchmark runs
            resolve,
            split_batch,
        )

        self.out, self.memory_steps, self.timeout = out, memory_steps, timeout
        self.overrides = with_defaults(with_defaults(overrides, FIXED), DEFAULTS)
        self.cfgs = {m: compose([*self.overrides, f"method={m}", *pinned(m)]) for m in methods}
        peers = [OWN_PEER[m] for m in methods if m in OWN_PEER]
        if any(m not in OWN_PEER or not PEERS[OWN_PEER[m]].loop for m in methods):
            peers += list(BASELINES)
        self.peers = list(dict.fromkeys(peers))
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
        # Interleaved: each method's own peer right after it; the baselines not yet listed at the end.
        order = []
        for m in methods:
            order.append(("ftbench", m))
            if m in OWN_PEER:
                order.append(("peer", OWN_PEER[m]))
        order += [("peer", p) for p in self.peers]
        self.entries = list(dict.fromkeys(order))

    # -- launching ------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        src = str(Path(__file__).resolve().parents[3])  # this checkout's ftbench, also in the children
        path = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": src + (os.pathsep + path if path else ""), "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}

    def run(self, entry: tuple[str, str], trace: bool, tag: str) -> dict:
        kind, name = entry
        folder = self.out / "runs" / f"{tag}-{kind}-{name}"
        steps = self.memory_steps if trace else self.cfg.profile.steps
        if kind == "ftbench":
            command = [sys.executable, "-c", "from ftbench.cli import main; main()", *self.overrides,
                       f"method={name}", *pinned(name), f"profile.steps={steps}",
                       f"profile.trace_memory={str(trace).lower()}", f"hydra.run.dir={folder}"]
        else:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "spec.json").write_text(json.dumps(self.spec(name, trace, steps), indent=1))
            command = [sys.executable, "-m", "ftbench.bench.peers.loop", str(folder / "spec.json"),
                       str(folder / "peer.json")]
        started = time.time()
        try:
            done = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=self.timeout)
            failure = _last_line(done.stderr) if done.returncode else None
        except subprocess.TimeoutExpired:
            failure = f"timed out after {self.timeout} s"
        folder.mkdir(parents=True, exist_ok=True)
        record = read_ftbench(folder) if kind == "ftbench" else read_peer(folder)
        if record["status"] != "ok" and not record["error"]:
            record["error"] = failure or "no result written"
        record["wall_s"] = round(time.time() - started, 1)
        print(f"  {tag:>8} {kind:>7} {name:<11} {_brief(record)}", flush=True)
        return record

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


def read_ftbench(folder: Path) -> dict:
    try:
        result = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return _record("failed", None)
    memory, throughput = result.get("memory") or {}, result.get("throughput") or {}
    peak = memory.get("train_peak_allocated_bytes") or memory.get("train_peak_traced_bytes")
    return _record(result["status"], result.get("error"), step_time=throughput.get("step_time_s_p50"), peak=peak,
                   trainable=(result.get("params") or {}).get("trainable"),
                   loss_first=(result.get("train") or {}).get("loss_first"),
                   loss_last=(result.get("train") or {}).get("loss_last"))


def read_peer(folder: Path) -> dict:
    try:
        result = json.loads((folder / "peer.json").read_text())
    except (OSError, ValueError):
        return _record("failed", None)
    return _record(result["status"], result.get("error"), step_time=result.get("step_time_s_p50"),
                   peak=result.get("peak_bytes"), trainable=result.get("trainable"),
                   loss_first=result.get("loss_first"), loss_last=result.get("loss_last"), package=result.get("package"))


def _record(status, error, step_time=None, peak=None, trainable=None, loss_first=None, loss_last=None,
            package=None) -> dict:
    return {"status": status, "error": error, "step_time_s": step_time, "peak_bytes": peak,
            "trainable": trainable, "loss_first": loss_first, "loss_last": loss_last, "package": package}


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _brief(record: dict) -> str:
    if record["status"] != "ok":
        return f"{record['status']}: {record['error']}"
    parts = [f"{record['wall_s']:.0f} s wall"]
    if record["step_time_s"] is not None:
        parts.insert(0, f"step {record['step_time_s']:.3f} s")
    if record["peak_bytes"] is not None:
        parts.insert(1, f"peak {record['peak_bytes'] / MiB:.1f} MiB")
    return ", ".join(parts)


def measure(bench: Benchmark, stop, report) -> dict[str, dict]:
    """Every entry's summary: median step time over the rounds, each round's, peak, trainable count, status.

    Phases: timed round 0, the CPU's traced runs, timed rounds 1.. until `stop(summary, rounds)`;
    `report(summary, rounds)` is called after each, so a run stopped early still leaves its table."""
    runs: dict[tuple[str, str], list[dict]] = {e: [] for e in bench.entries}
    memory: dict[tuple[str, str], dict] = {}
    round_ = 0
    while True:
        order = bench.entries if round_ % 2 == 0 else bench.entries[::-1]
        for entry in order:
            if runs[entry] and runs[entry][0]["status"] != "ok":
                continue  # it cannot run: once is enough
            runs[entry].append(bench.run(entry, trace=False, tag=f"time{round_}"))
        if round_ == 0 and not bench.cuda:
            for entry in bench.entries:
                if runs[entry][0]["status"] == "ok":
                    memory[entry] = bench.run(entry, trace=True, tag="memory")
        summary = summarize(runs, memory)
        round_ += 1
        report(summary, round_)
        if stop(summary, round_):
            return summary


def summarize(runs: dict[tuple[str, str], list[dict]], memory: dict[tuple[str, str], dict]) -> dict[str, dict]:
    summary = {}
    for entry, records in runs.items():
        ok = [r for r in records if r["status"] == "ok"]
        first = ok[0] if ok else records[0]
        peaks = [r["peak_bytes"] for r in ok if r["peak_bytes"] is not None]
        traced = memory.get(entry)
        summary[":".join(entry)] = {
            "status": first["status"] if traced is None or first["status"] != "ok" else traced["status"],
            "error": first["error"] if first["status"] != "ok" else (traced or first)["error"],
            "step_time_s": statistics.median([r["step_time_s"] for r in ok]) if ok else None,
            "step_time_rounds_s": [r["step_time_s"] if r["status"] == "ok" else None for r in records],
            "peak_bytes": (traced["peak_bytes"] if traced else statistics.median(peaks) if peaks else None),
            "trainable": first["trainable"], "loss_first": first["loss_first"], "loss_last": first["loss_last"],
            "package": first["package"],
        }
    return summary


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
    parser.add_argument("--max-rounds", type=int, default=MAX_ROUNDS, help="timed rounds (ABBA order) at most")
    parser.add_argument("--half-width", type=float, default=HALF_WIDTH,
                        help="rounds go on until every time ratio's 95 %% CI half-width is at most this")
    parser.add_argument("--memory-steps", type=int, default=1, help="CPU: traced steps of the memory run")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/bench-peers/<time>")
    args = parser.parse_args(argv)
    methods = args.methods or all_methods()
    out = args.out or Path("outputs/bench-peers") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        bench = Benchmark(methods, args.overrides, out, args.memory_steps, args.timeout)
    except (UserError, HydraException, OmegaConfBaseException) as exc:
        problem = exc if isinstance(exc, UserError) else explain_compose_error(exc)
        print(f"bench-peers: error: {problem}", file=sys.stderr)
        sys.exit(2)
    command = "python -m ftbench.bench.peers.timing " + " ".join([*(["--methods", *args.methods] if args.methods else []),
                                                           f"--max-rounds {args.max_rounds}",
                                                           f"--half-width {args.half_width}", *args.overrides])
    rule = Rounds(args.max_rounds, args.half_width)
    print(f"bench-peers: {len(bench.entries)} entries x 2-{args.max_rounds} rounds (until every time ratio's 95 % "
          f"CI half-width <= {args.half_width})"
          f"{'' if bench.cuda else ' + 1 traced run each'}; writing {out}", flush=True)
    final = {}

    def report(summary: dict[str, dict], rounds: int) -> None:
        rows = pairs(methods, summary)
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
                f"{rounds} ABBA rounds{done} of each round's ratio of the runs' median step times, ± the half-width "
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

    measure(bench, lambda summary, rounds: rule.done([r["time_spread"] for r in pairs(methods, summary)], rounds),
            report)
    print(f"wrote {out / 'peers.md'}")
    return final


if __name__ == "__main__":
    main()
