"""`make gpu-check`: the first GPU run, prepared. On a machine with one NVIDIA GPU of at least 80 GB:

1. install what is missing from the wheels it was given (docs/gpu-check.md, "On a GPU machine without network":
   ../shared/tools/device-wheels.sh fills .whl/), into .site/ of the checkout;
2. run the `gpu` tests (tests/test_gpu.py);
3. profile every registered method at the LLaMA2-7B shape (random init, 4 x 512 tokens, bf16,
   checkpointing), and those whose schema names the RoBERTa-large sweep (32 x 128 tokens, the docs'
   table) there, each with the variants its schema declares (GaLore's layer-wise mode, ...), each job
   in its own process, after full fine-tuning with bf16 updates in each sweep;
4. print one table: method, peak allocated, reserved, step time, the peak's and the step time's ratio to
   full fine-tuning in the same sweep, the targets the method's schema states (`gpu_targets`,
   methods/config.py: the memory figure, and the step time's bound where it gives one) and pass/fail;
   write it to <out>/gpu-check.md.

    python scripts/gpu_check.py [--dry-run] [--wheels DIR] [--out DIR] [--methods M ...] [--sweeps S ...]
                                [--skip-tests]

--dry-run (`make gpu-check DRY=1`) checks nothing and runs nothing: it lists what it would install and
run, on any machine. Exit status: 0 when every step passed, 1 when a test or a target failed, 2 when
the machine does not qualify or a package is missing without a wheel. With the nine methods before
galore, apollo and adam-mini it was sized to end within 8 minutes on an H100 or H200 (about 3 for the
tests, 4 for the profile jobs: one per method, variant and sweep); the 6 jobs of galore, apollo and
adam-mini (with their variants) have not run on a GPU yet.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIN_GPU_GIB = 80
GiB, MiB = 2**30, 2**20

# module -> the distribution that provides it (what the GPU machine may lack; docs/gpu-check.md's offline section).
NEEDED = {"torch": "torch", "transformers": "transformers", "peft": "peft", "accelerate": "accelerate",
          "hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime",
          "datasets": "datasets", "rich": "rich", "safetensors": "safetensors", "scipy": "scipy",
          "sklearn": "scikit-learn", "matplotlib": "matplotlib", "pytest": "pytest", "galore_torch": "galore-torch",
          "apollo_torch": "apollo-torch", "adam_mini": "adam-mini", "bitsandbytes": "bitsandbytes"}

LLAMA = ["mode=profile", "model=llama2-7b", "model.random_init=true", "hardware=auto", "hardware.precision=bf16-pure",
         "hardware.gradient_checkpointing=true", "profile.batch_size=4", "profile.seq_len=512",
         "profile.warmup_steps=1", "profile.steps=3", "logger=none", "train.progress=false"]
ROBERTA = ["mode=profile", "model=roberta-large", "model.random_init=true", "hardware=auto",
           "hardware.precision=bf16-pure", "hardware.gradient_checkpointing=true", "profile.batch_size=32",
           "profile.seq_len=128", "profile.warmup_steps=2", "profile.steps=10", "logger=none",
           "train.progress=false"]
SWEEPS = {"llama2-7b": LLAMA, "roberta-large": ROBERTA}  # the names a schema's gpu_targets use
# Each sweep's baseline, the ratio's denominator: full fine-tuning with bf16 updates (the docs' RoBERTa table).
BASELINE = "full (bf16 updates)"
BASELINE_OVERRIDES = ["method=full", "method.master_dtype=weight"]
BASELINE_TARGETS = {"roberta-large": "2908 MiB"}


@dataclass
class Job:
    sweep: str  # llama2-7b | roberta-large
    label: str  # the table's method column
    overrides: list[str]
    target: str = "—"  # as the method's schema states it (gpu_targets)
    # Pass when peak allocated <= max_gib (GiB), or ratio to full <= max_ratio; None: pass when the job ran.
    max_gib: float | None = None
    max_ratio: float | None = None
    max_time_ratio: float | None = None  # pass only when the step time / full's is at most this too
    result: dict = field(default_factory=dict)


def jobs(gpu_gib: float | None, only: list[str] | None = None, sweeps: list[str] | None = None) -> list[Job]:
    """Per sweep (`sweeps`, default all): the baseline, then every registered method (or those in `only`)
    whose schema names the sweep in its `gpu_targets` (with its `short_setup` overrides), each followed by
    its schema's `variants` that name the sweep (the row "<name> (<label>)", the variant's overrides
    added), unless it needs a larger GPU than `gpu_gib` (None: list them all). Imports ftbench's
    registry: call it once the packages are importable."""
    from ftbench import methods

    listed = []
    for sweep in sweeps or SWEEPS:
        listed.append(Job(sweep, BASELINE, BASELINE_OVERRIDES, BASELINE_TARGETS.get(sweep, "—")))
        for name in (m for m in methods.names() if only is None or m in only):
            schema = methods.config_class(name)
            rows = [(name, (), schema.gpu_targets.get(sweep))] + [
                (f"{name} ({label})", variant.overrides, variant.gpu_targets.get(sweep))
                for label, variant in schema.variants.items()]
            for label, overrides, target in rows:
                if target is not None and (gpu_gib is None or gpu_gib >= target.min_gpu_gib):
                    listed.append(Job(sweep, label, [f"method={name}", *schema.short_setup, *overrides],
                                      target.stated, target.max_gib, target.max_ratio, target.max_time_ratio))
    return listed


def gpu() -> tuple[str, float] | None:
    """(name, memory in GiB) of the first NVIDIA GPU, from nvidia-smi; None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, mib = (part.strip() for part in out[0].rsplit(",", 1))
    return name, float(mib) / 1024


def missing_modules(site: Path) -> list[str]:
    sys.path.insert(0, str(site))
    try:
        return [module for module in NEEDED if importlib.util.find_spec(module) is None]
    finally:
        sys.path.remove(str(site))


def say(text: str) -> None:
    print(text, flush=True)


def run_step(command: list[str], env: dict, dry: bool, timeout: int) -> int:
    say(f"$ {shlex.join(command)}")
    if dry:
        return 0
    try:
        return subprocess.run(command, cwd=REPO, env=env, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        say(f"  (stopped after {timeout} s)")
        return 124


def gib(value: int | None) -> str:
    return f"{value / GiB:.2f} GiB" if value else "—"


def judge(job: Job, full: dict | None) -> tuple[str, str, str]:
    """(peak's ratio to full, step time's ratio to full, pass/fail) of one finished job."""
    result = job.result
    if result.get("status") != "ok":
        return "—", "—", f"FAIL ({result.get('status', 'no result')}: {str(result.get('error'))[:60]})"
    peak, step = result["memory"]["train_peak_allocated_bytes"], (result.get("throughput") or {}).get("step_time_s_p50")
    full_peak = full["memory"]["train_peak_allocated_bytes"] if full else None
    full_step = (full.get("throughput") or {}).get("step_time_s_p50") if full else None
    ratio = peak / full_peak if peak and full_peak else None
    time_ratio = step / full_step if step and full_step else None
    passed = True
    if job.max_gib is not None:
        passed = bool(peak) and peak <= job.max_gib * GiB
    elif job.max_ratio is not None:
        passed = ratio is not None and ratio <= job.max_ratio
    if job.max_time_ratio is not None:
        passed &= time_ratio is not None and time_ratio <= job.max_time_ratio
    shown = [f"{r:.3f}" if r is not None else "—" for r in (ratio, time_ratio)]
    return shown[0], shown[1], "pass" if passed else "FAIL"


def table(all_jobs: list[Job]) -> tuple[str, bool]:
    rows = ["| sweep | method | peak allocated | reserved | step time p50 | ratio to full | target | time to full "
            "| time target | result |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ok = True
    for sweep in dict.fromkeys(j.sweep for j in all_jobs):
        members = [j for j in all_jobs if j.sweep == sweep]
        full = next((j for j in members if j.label == BASELINE and j.result.get("status") == "ok"), None)
        for job in members:
            ratio, time_ratio, verdict = judge(job, full.result if full else None)
            time_target = f"≤ {job.max_time_ratio}" if job.max_time_ratio is not None else "—"
            ok &= verdict == "pass"
            memory, speed = job.result.get("memory") or {}, job.result.get("throughput") or {}
            step = speed.get("step_time_s_p50")
            rows.append(f"| {sweep} | {job.label} | {gib(memory.get('train_peak_allocated_bytes'))} | "
                        f"{gib(memory.get('train_peak_reserved_bytes'))} | {f'{step:.3f} s' if step else '—'} | "
                        f"{ratio} | {job.target} | {time_ratio} | {time_target} | {verdict} |")
    return "\n".join(rows), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list what would be installed and run; run nothing")
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl", help="wheels of the missing packages (.whl/)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu-check" / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods (the baseline always runs)")
    parser.add_argument("--sweeps", nargs="+", default=None, choices=list(SWEEPS), help="only these shapes")
    parser.add_argument("--skip-tests", action="store_true", help="leave out step 2, the gpu tests")
    args = parser.parse_args(argv)
    dry = args.dry_run
    started = time.time()

    # 1. The machine.
    found = gpu()
    say(f"GPU: {found[0]}, {found[1]:.0f} GiB" if found else "GPU: none found (nvidia-smi)")
    if not dry and (found is None or found[1] < MIN_GPU_GIB):
        say(f"gpu-check: error: needs one NVIDIA GPU with at least {MIN_GPU_GIB} GB; `make gpu-check DRY=1` "
            "lists the steps on any machine")
        return 2

    # 2. What is missing, from the wheels given.
    site = REPO / ".site"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    missing = missing_modules(site)
    say(f"missing: {', '.join(NEEDED[m] for m in missing) or 'nothing'}")
    if missing:
        wheels = sorted(args.wheels.glob("*.whl")) + sorted(args.wheels.glob("*.tar.gz"))
        if not wheels and not dry:
            say(f"gpu-check: error: {', '.join(NEEDED[m] for m in missing)} missing and no wheels in {args.wheels}; "
                "fill it with ../shared/tools/device-wheels.sh (docs/gpu-check.md: On a GPU machine without network)")
            return 2
        code = run_step([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                         "--no-build-isolation", "--target", str(site), *map(str, wheels or [args.wheels / "*.whl"])],
                        env, dry, timeout=300)
        if code:
            return 2

    # 3. The gpu tests.
    tests_code = 0 if args.skip_tests else run_step(
        [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-p", "no:cacheprovider"], env, dry,
        timeout=240)

    # 4. The sweeps, one process per job (each measured alone); the methods come from ftbench's registry.
    # missing_modules looked in site before step 2 made it: its cached "no such folder" would hide the packages
    sys.path_importer_cache.pop(str(site), None)
    importlib.invalidate_caches()
    sys.path[:0] = [str(site), str(REPO / "src")]
    try:
        all_jobs = jobs(found[1] if found else None, args.methods, args.sweeps)
    except ImportError as exc:  # dry run on a machine that still lacks the packages
        say(f"dry run: the profile jobs come from ftbench's method registry, which needs {exc.name} (installed "
            "by step 2); nothing was installed or run")
        return 0 if dry else 2
    for i, job in enumerate(all_jobs):
        shape = SWEEPS[job.sweep]
        folder = args.out / f"{i:02d}-{job.sweep}-{job.label.split()[0]}"
        run_step([sys.executable, "-m", "ftbench.cli", *shape, *job.overrides, f"hydra.run.dir={folder}"],
                 env, dry, timeout=180)
        path = folder / "result.json"
        job.result = json.loads(path.read_text()) if path.is_file() else {}
    if dry:
        say(f"dry run: {len(all_jobs)} profile jobs listed; nothing was installed or run")
        return 0

    # 5. The table.
    text, targets_ok = table(all_jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.md").write_text(f"GPU: {found[0]}\n\n{text}\n")
    tests = 'skipped' if args.skip_tests else 'passed' if tests_code == 0 else f'FAILED (exit {tests_code})'
    say(f"\n{text}\n\ngpu tests: {tests}; "
        f"table: {args.out / 'gpu-check.md'}; {time.time() - started:.0f} s")
    return 0 if tests_code == 0 and targets_ok else 1


if __name__ == "__main__":
    sys.exit(main())
