"""Soak: a long async PPO run with actors killed at random, healed without a person.

Runs `run_ppo` in this process (the driver) on a finished run's SFT and reward models, while a thread
kill -9s a random generator, scorer or learner process every `--every` seconds (uniform ± 50 %). At the
end it reports the learner steps completed against those asked, the faults injected and healed, the time
lost per fault, whether the sample accounting balances, and the driver's memory and the object store's
bytes at the start, middle and end of the run.

    .venv/bin/python benchmarks/bench_soak.py --run runs/demo --steps 1000 --every 30
        # -> benchmarks/results/soak.json

The soak runs in a scratch copy of the run's data, SFT and reward model (`scratch.scratch_run`, removed at
the end; `--keep` keeps it and prints where), never in the run itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `scratch` also when this file is loaded by path

from scratch import run_overrides, scratch_run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ACTOR_CLASSES = {"generator": "GeneratorActor", "scorer": "ScorerActor", "learner": "PPOLearnerActor"}


def object_store_bytes() -> int:
    """Bytes held in this node's object store, as the raylet reports them (`ray memory --stats-only`)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    stats = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
    return stats.object_store_bytes_used + stats.object_store_bytes_fallback + stats.spilled_bytes_total


def actor_pids(class_name: str) -> list[int]:
    """Live processes of this run's `class_name` actors (Ray titles them `ray::<Class>...`)."""
    import psutil

    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and any(
                    part.startswith(f"ray::{class_name}") for part in proc.cmdline()):
                pids.append(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


class Injector(threading.Thread):
    """Kills a random actor process every `every` s (± 50 %) until stopped."""

    def __init__(self, every: float, seed: int, started: threading.Event):
        super().__init__(daemon=True)
        self.every, self.rng, self.started = every, random.Random(seed), started
        self.injected: list[dict] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        self.started.wait()  # faults during the run, not during its start-up
        self.t0 = time.monotonic()
        while not self.stop.wait(self.every * self.rng.uniform(0.5, 1.5)):
            kind = self.rng.choice(sorted(ACTOR_CLASSES))
            pids = actor_pids(ACTOR_CLASSES[kind])
            if not pids:
                continue
            pid = self.rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.injected.append({"actor": kind, "pid": pid, "at_s": round(time.monotonic() - self.t0, 1)})
            print(f"  killed {kind} (pid {pid}) at {self.injected[-1]['at_s']} s", flush=True)


class MemoryProbe(threading.Thread):
    """Driver RSS and object-store bytes at the start, middle and end of the run (by learner step)."""

    def __init__(self, metrics: Path, steps: int):
        super().__init__(daemon=True)
        self.metrics, self.marks = metrics, {"start": 1, "middle": steps // 2}
        self.started = threading.Event()  # set once the first learner step is logged
        self.samples: dict[str, dict] = {}
        self.stop = threading.Event()

    def sample(self) -> dict:
        import psutil

        return {"driver_rss_mb": psutil.Process().memory_info().rss / 2**20,
                "object_store_mb": object_store_bytes() / 2**20}

    def _step(self) -> int:
        if not self.metrics.exists():
            return 0
        step = 0
        with self.metrics.open() as f:
            for line in f:
                row = json.loads(line)
                if row.get("stage") == "ppo":
                    step = max(step, int(row.get("step", 0)))
        return step

    def run(self) -> None:
        while not self.stop.wait(1.0):
            step = self._step()
            if step >= 1:
                self.started.set()
            for name, at in self.marks.items():
                if name not in self.samples and step >= at:
                    self.samples[name] = {"step": step, **self.sample()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a run with models/sft and models/rm")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=float, default=30.0, help="mean seconds between injected faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch run (its metrics and checkpoints)")
    args = parser.parse_args()

    from raylhf.configs.loader import load_config
    from raylhf.orchestration.paths import RunPaths
    from raylhf.orchestration.ppo_stage import run_ppo

    source = RunPaths(args.run)
    for stage in ("sft", "rm"):
        if not (source.model(stage) / "config.json").exists():
            raise SystemExit(f"{source.model(stage)} missing: run `make run` (or `raylhf run`) first")
    with scratch_run(args.run, ["data", "models/sft", "models/rm"], keep=args.keep) as soak:
        # Short steps, so a thousand of them fit in minutes; the pipeline's shape is the default's.
        cfg = load_config(args.config, [
            *run_overrides(soak), f"ppo.total_steps={args.steps}", "ppo.eval_every=0",
            "ppo.batch_size=16", "ppo.minibatch_size=16", "ppo.prompts_per_request=8", "ppo.buffer_size=32",
            "ppo.ptx_coef=0", "supervision.call_timeout_s=60", "supervision.scorer.call_timeout_s=60", *args.overrides])
        paths = RunPaths(soak)
        probe = MemoryProbe(paths.metrics, args.steps)
        injector = Injector(args.every, args.seed, probe.started)
        print(f"soak: {args.steps} learner steps, a fault every ~{args.every:g} s", flush=True)
        t0 = time.monotonic()
        injector.start()
        probe.start()
        try:
            summary = run_ppo(cfg, paths, paths.model("sft"), paths.model("rm"), soak / "models" / "ppo",
                              with_eval=False)
        finally:
            injector.stop.set()
            probe.stop.set()
        wall = time.monotonic() - t0
        probe.samples["end"] = {"step": summary["steps"], **probe.sample()}
        rows = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
        if args.keep:
            print(f"scratch run kept in {soak}")

    steps = sorted(r["step"] for r in rows if r.get("stage") == "ppo" and "reward" in r)
    step_times = [r["step_time_s"] for r in rows if r.get("stage") == "ppo" and "step_time_s" in r]
    healed = summary["faults"]
    lost_s = max(0.0, summary["wall_s"] - summary["steps"] * statistics.median(
        [b["wall_s"] - a["wall_s"] for a, b in zip(rows, rows[1:])
         if a.get("stage") == b.get("stage") == "ppo" and "wall_s" in a and "wall_s" in b and b["step"] == a["step"] + 1]
        or [0.0]))
    result = {
        "steps_asked": args.steps, "steps_completed": summary["steps"],
        "steps_logged_once": steps == list(range(1, args.steps + 1)),
        "faults_injected": len(injector.injected), "faults_healed": len(healed),
        "generator_restarts": summary["generator_restarts"], "scorer_restarts": summary["scorer_restarts"],
        "learner_restarts": summary["learner_restarts"],
        "learner_steps_redone": sum(f["lost_steps"] for f in healed),
        "time_lost_per_fault_s": lost_s / max(1, len(injector.injected)),
        "accounting_balanced": summary["accounting_balanced"],
        "samples": {k: v for k, v in summary.items() if k.startswith("samples_")},
        "memory": probe.samples, "wall_s": wall, "median_learner_step_s": statistics.median(step_times or [0.0]),
        "injected": injector.injected, "healed": healed,
    }
    mem = probe.samples
    print(f"\n{'':<8}{'step':>6}{'driver RSS MB':>15}{'object store MB':>17}")
    for name in ("start", "middle", "end"):
        if name in mem:
            print(f"{name:<8}{mem[name]['step']:>6}{mem[name]['driver_rss_mb']:>15.1f}{mem[name]['object_store_mb']:>17.1f}")
    print(f"\nsteps {result['steps_completed']}/{args.steps} (each logged once: {result['steps_logged_once']}); "
          f"faults injected {result['faults_injected']}, healed {result['faults_healed']} "
          f"(generators {result['generator_restarts']}, scorers {result['scorer_restarts']}, "
          f"learner {result['learner_restarts']}); learner steps redone {result['learner_steps_redone']}; "
          f"time lost per fault {result['time_lost_per_fault_s']:.1f} s; accounting balanced "
          f"{result['accounting_balanced']}; wall {wall:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
