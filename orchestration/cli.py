"""`raylhf` command line: one subcommand per pipeline stage, plus `run` for the whole pipeline.

Every subcommand takes `--config` (a preset name or YAML path) and dotted overrides such as
`ppo.kl_coef=0.05`, anywhere after the command (before, between or after its options). A command checks
its inputs before it writes anything: bad config (a checkpoint path that is not a local Hugging Face
checkpoint included) exits with status 2 and names the key or flag, bad data exits with status 3 and names
the file and line, a run that fails past what it can heal (an actor lost more than
`supervision.max_consecutive_restarts` times in a row, rewards past `reward.max_reject_rate`) exits with status 4
and names the actor or key, and a round waiting for human rankings (`collect.labeler=human`, without `--wait`)
exits with status 5 and names the `raylhf label` command that serves them; each time the message is one line on
stderr. Output cut short by its reader
(`raylhf config --explain | head`) ends quietly with status 141, as if stopped by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import sys
import time
from pathlib import Path

import yaml

# Light imports only up here: `raylhf --help` and `raylhf config` load this module and nothing that pulls
# torch, Ray, vLLM, transformers or pyarrow (those are imported inside the commands that use them).
from raylhf.configs.loader import DEFAULT_PRESET, ConfigError, explain, load_config, preset_names, save_config
from raylhf.contracts.hf_checkpoint import CheckpointError
from raylhf.contracts.remote import ActorFailure
from raylhf.orchestration.paths import RunPaths, records_for
from raylhf.orchestration.storage import RunStorage

EPILOG = """\
overrides:
  Any config field can be set as key.path=value anywhere after the command, before, between or
  after the options, e.g. raylhf sft sft.epochs=2 --out models/sft sft.lr=5e-4.
  `raylhf config --explain` lists every field.

output:
  A run keeps everything under <output_dir>/<name>/ (default runs/demo/): data/, models/<stage>/
  (Hugging Face format), config.yaml (the resolved config), metrics.jsonl, summaries/, report.md;
  iteration round r in rounds/<r>/ (comparisons.jsonl, models/{rm,ppo}, summaries/, metrics.jsonl).
  A command whose --out (or the --rm/--policy that rm-eval and eval score) is not the run's own model
  keeps its summary, metrics and checkpoints in <output>.records/ beside it, not in the run.
"""


# Column-name flags: `--prompt-key question` is `data.columns.prompt=question`.
COLUMN_FLAGS = ("prompt_id", "prompt", "response", "messages", "chosen", "rejected", "responses", "ranking", "text")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_PRESET,
                        help=f"preset ({', '.join(preset_names())}) or path to a YAML config (default: {DEFAULT_PRESET})")
    columns = parser.add_argument_group("column names of your data files (data.columns.*)")
    for key in COLUMN_FLAGS:
        columns.add_argument(f"--{key.replace('_', '-')}-key", dest=f"column_{key}", metavar="NAME",
                             help=f"column holding `{key}`")
    # default=[]: without one argparse counts the overrides as required when the command's other
    # positional (`data demo`) is missing, and names both in the error.
    parser.add_argument("overrides", nargs="*", default=[], metavar="key.path=value", help="config overrides")


def _wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true",
                        help="with collect.labeler=human: wait for the rankings (checking every label.poll_s s) "
                             "instead of exiting with status 5 until they are in")


def build_parser() -> argparse.ArgumentParser:
    return _parsers()[0]


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each command's own parser by name."""
    parser = argparse.ArgumentParser(
        prog="raylhf",
        description="InstructGPT-style RLHF on Ray: supervised fine-tuning, a reward model trained on K-wise "
                    "rankings and PPO with a KL penalty and a pretraining mix.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("config", help="print the resolved config (or explain every field)",
                       description="Validate and print the resolved config as YAML.")
    p.add_argument("--explain", action="store_true", help="list every field with its default and meaning")
    _common(p)

    p = sub.add_parser("data", help="write the built-in demo task's datasets",
                       description="Write the demo task's prompts (train / heldout / generalization splits), "
                                   "demonstrations, seed comparisons and pretraining corpus as JSONL.")
    p.add_argument("which", choices=["demo"], help="dataset to write (the built-in demo task)")
    p.add_argument("--out", type=Path, help="output directory (default: <run>/data)")
    _common(p)

    p = sub.add_parser("pretrain", help="train the demo tokenizer and base model",
                       description="Train a byte-level BPE tokenizer and pretrain the demo base model (a tiny "
                                   "Llama) on the task's corpus. Writes models/base in HF format.")
    _common(p)

    p = sub.add_parser("sft", help="supervised fine-tuning on demonstrations (step 1)",
                       description="Fine-tune a local HF causal LM on demonstrations; loss on response tokens, "
                                   "cosine LR decay, best epoch by validation loss. Saves model + tokenizer.")
    p.add_argument("--model", type=Path, help="base checkpoint (default: <run>/models/base)")
    p.add_argument("--data", type=Path, help="demonstrations JSONL/Parquet (default: <run>/data/demonstrations.jsonl)")
    p.add_argument("--out", type=Path, help="output checkpoint (default: <run>/models/sft)")
    _common(p)

    p = sub.add_parser("rm", help="train the reward model on ranked comparisons (step 2)",
                       description="Replace the SFT model's LM head with a scalar head and train it on K-wise "
                                   "rankings with InstructGPT's loss over all C(K,2) pairs; then shift its "
                                   "bias so demonstrations score mean 0.")
    p.add_argument("--model", type=Path, help="SFT checkpoint (default: <run>/models/sft)")
    p.add_argument("--data", type=Path, help="comparisons JSONL/Parquet (default: <run>/data/comparisons.jsonl)")
    p.add_argument("--demonstrations", type=Path, help="demonstrations for reward normalisation "
                                                       "(default: <run>/data/demonstrations.jsonl)")
    p.add_argument("--out", type=Path, help="output checkpoint (default: <run>/models/rm)")
    _common(p)

    p = sub.add_parser("collect", help="sample K responses per prompt and have the labeler rank them",
                       description="Sample K responses per prompt from one or more policies (vLLM generator "
                                   "actors; policies x collect.temperatures) and have the task's labeler rank "
                                   "them: a comparisons dataset for `raylhf rm`.")
    p.add_argument("--policy", action="append", help="policy checkpoint or run stage name (repeatable; "
                                                      "default: collect.policies)")
    p.add_argument("--prompts", type=Path, help="prompts JSONL/Parquet (default: <run>/data/prompts_train.jsonl)")
    p.add_argument("--out", type=Path, help="output comparisons (default: <run>/data/comparisons.jsonl)")
    _wait(p)
    _common(p)

    p = sub.add_parser("ppo", help="PPO-ptx against the reward model (step 3), async actor/learner",
                       description="Align the SFT policy with clipped PPO against the reward model, a per-token KL "
                                   "penalty to the SFT policy and a pretraining-mix term. vLLM generator actors, "
                                   "a reward-service pool and a learner actor run concurrently (ppo.mode=async) "
                                   "or strictly in sequence (ppo.mode=sync). Saves the policy in HF format.")
    p.add_argument("--policy", type=Path, help="initial policy and KL reference (default: <run>/models/sft)")
    p.add_argument("--rm", type=Path, help="reward model, also the value function's init (default: <run>/models/rm)")
    p.add_argument("--out", type=Path, help="output policy checkpoint (default: <run>/models/ppo)")
    p.add_argument("--address", help="Ray cluster address (overrides ray.address; default: a local Ray)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run's last PPO checkpoint (<run>/checkpoints/ppo, written every "
                        "ppo.checkpoint_every steps) up to ppo.total_steps")
    p.add_argument("--fresh", action="store_true",
                   help="delete the run's PPO checkpoint and start the stage over (without --resume or --fresh, "
                        "an existing checkpoint is an error)")
    _common(p)

    p = sub.add_parser("rm-eval", help="reward-model accuracy on held-out prompts vs its ceiling and a baseline",
                       description="Sample K responses per held-out prompt from the SFT policy, have the labeler "
                                   "rank them, and report the RM's pairwise accuracy, the ceiling (the noiseless "
                                   "utility's accuracy against the same labels) and the baseline of scoring by "
                                   "the SFT model's own log-probability, overall and on pairs of equal token length "
                                   "(where length cannot explain a preference); generalization split separately.")
    p.add_argument("--sft", type=Path, help="SFT checkpoint (default: <run>/models/sft)")
    p.add_argument("--rm", type=Path, help="reward model (default: <run>/models/rm)")
    _common(p)

    p = sub.add_parser("eval", help="judge policies on held-out prompts",
                       description="Sample each policy on the held-out splits; report the labeler's win rates "
                                   "(ties count half), per-family instruction following, the true utility, the "
                                   "RM score and the LM loss on held-out pretraining text.")
    p.add_argument("--policy", action="append", help="NAME=PATH or a run stage name (repeatable; default: the "
                                                      "run's base, sft and ppo models that exist)")
    p.add_argument("--rm", type=Path, help="reward model to score responses with (default: <run>/models/rm)")
    _common(p)

    p = sub.add_parser("run", help="run the whole pipeline on the configured task, iteration rounds included",
                       description="data -> base model -> SFT -> comparisons -> reward model -> PPO-ptx -> evaluation, "
                                   "then iterate.rounds iteration rounds (see `raylhf iterate --help`) and report.md, "
                                   "each stage skipped when its output already exists (delete it to redo a stage).")
    _wait(p)
    _common(p)

    p = sub.add_parser("iterate", help="iterated RLHF: rank the current policy, retrain the RM, continue PPO (step 4)",
                       description="Continue a run whose first PPO stage has finished with iterate.rounds rounds "
                                   "(InstructGPT step 4). Round r (in <run>/rounds/<r>/) samples K responses per fresh "
                                   "training prompt (iterate.n_prompts, never ranked before) from the current policy "
                                   "(iterate.policies x iterate.temperatures), has the labeler rank them and tags each "
                                   "row with the round and the policies; retrains the reward model on every comparison "
                                   "so far (iterate.rm_init: from SFT or warm) and evaluates it on held-out pairs of SFT "
                                   "and of the current policy (overall, equal length, by kind of contrast); continues "
                                   "PPO-ptx from the current policy for iterate.ppo_steps steps against it, the KL "
                                   "penalty still to SFT (iterate.value_init: value function from the new RM or "
                                   "carried over); and evaluates the policy against SFT and the previous round's "
                                   "(win rates, true utility, instruction following, LM loss). An interrupted round "
                                   "resumes at the stage it was in, a finished stage is skipped; report.md gains a "
                                   "table and plots per round. `raylhf run` runs the rounds too.")
    p.add_argument("--rounds", type=int, help="rounds after the first (overrides iterate.rounds)")
    _wait(p)
    _common(p)

    p = sub.add_parser("label", help="rank the pending batch yourself in a browser, or print the labelers' --stats",
                       description="Serve the run's pending batch (collect.labeler=human; the latest round that has "
                                   "one) to labelers in a browser: rank each prompt's K responses, score them 1-7, "
                                   "tick metadata, skip or flag. Every answer goes to the labels log before it is "
                                   "acknowledged. Binds label.host (127.0.0.1); labelers and their tokens come from "
                                   "label.labelers.")
    p.add_argument("--round", type=int, help="iteration round whose batch to serve (default: the latest with one)")
    p.add_argument("--out", type=Path, help="serve the batch of `raylhf collect --out F`'s F instead")
    p.add_argument("--stats", action="store_true", help="print the labelers' statistics and agreement, then exit")
    p.add_argument("--json", action="store_true", help="with --stats: as JSON")
    p.add_argument("--host", help="address to bind (overrides label.host; other than loopback needs label.labelers)")
    p.add_argument("--port", type=int, help="port (overrides label.port; 0: a free one)")
    _common(p)
    return parser, dict(sub.choices)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with overrides anywhere after the command: `rm name=r --out X rm.epochs=4`.

    A plain parse takes the overrides (a `nargs="*"` positional) only as one run of tokens, so a flag
    between two of them is an error. argparse's intermixed parse lifts that but refuses a parser with
    subparsers; so the first token picks the command and the command's own parser reads the rest
    intermixed. It still knows which flags take a value, so `--policy NAME=PATH` stays the flag's.
    """
    parser, commands = _parsers()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in commands:
        # No command, `--help`, or an unknown command: argparse's own help or error message.
        return parser.parse_args(argv)
    args = commands[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def _start(cfg, paths: RunPaths) -> None:
    """The run directory and its resolved config; only once the command's inputs passed their checks."""
    paths.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.config)


def _records(paths: RunPaths, targets: list[tuple[Path, Path | None]]) -> RunPaths:
    """Where the command's summary, metrics and checkpoints go (`records_for`), said when not in the run."""
    records = records_for(paths, targets)
    if records is not paths:
        logging.getLogger(__name__).info("not the run's own output: this command's summary, metrics and "
                                         "checkpoints go to %s, not %s", records.root, paths.root)
    return records


def _report(stage: str, summary: dict) -> None:
    print(f"[{stage}] " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}))


def _one_line(error: Exception) -> str:
    """An error message on one line: a multi-line one (every bad key of a config) joined with '; '."""
    first, *rest = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
    return f"{first} {'; '.join(rest)}" if rest else first


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a reader that went away fails here, inside the handler, not at exit
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a pipe of the run's own (a worker's connection), not the user's `| head`: a real failure
        # `raylhf config --explain | head`: the reader has what it wanted. End quietly with the status of a
        # process stopped by SIGPIPE (128 + 13); stdout goes to /dev/null so the flush at exit cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except Exception as e:
        failure = _failure(e)
        if failure is None:
            raise  # a bug, not bad input or a failed run: its traceback is what helps
        status, kind = failure
        if status == 4:
            # An actor that could not be healed (see supervision.max_consecutive_restarts), or a reward service past
            # its reject rate: the cause in one line; the full trace is in the log above.
            logging.getLogger(__name__).debug("run failed", exc_info=True)
        # Rankings still to come: the `raylhf label` command that serves them, with this command's config.
        text = e.message(args.config, args.overrides) if status == 5 else _one_line(e)
        print(f"{kind}: {text}", file=sys.stderr)
        return status


def _failure(error: Exception) -> tuple[int, str] | None:
    """Exit status and stderr prefix of an error the user can act on: 2 config, 3 data, 4 a failed run, 5 human
    rankings still to come (`collect.labeler: human`)."""
    if isinstance(error, (ConfigError, CheckpointError)):  # before the imports: `raylhf label` stays light
        return 2, "config error"
    # Imported only once something else failed: contracts.dataio pulls pyarrow, and reward_service.errors pulls
    # torch through its package's __init__; `raylhf config` needs neither.
    from raylhf.contracts.dataio import DataError
    from raylhf.labeling.store import LabelingError
    from raylhf.orchestration.human_rankings import RankingsPending
    from raylhf.reward_service.errors import ScoringError

    if isinstance(error, (DataError, LabelingError)):
        return 3, "data error"
    if isinstance(error, RankingsPending):
        return 5, "waiting for human rankings"
    if isinstance(error, (ActorFailure, ScoringError)):
        return 4, "run failed"
    return None


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll flags an error on the writing end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll on this platform, or stdout is not a file
        return False


def _dispatch(args) -> int:
    columns = [f"data.columns.{key}={getattr(args, 'column_' + key)}" for key in COLUMN_FLAGS
               if getattr(args, "column_" + key, None)]
    if args.command == "config":
        cfg = load_config(args.config, [*args.overrides, *columns])
        if args.explain:
            print("\n".join(explain()))
        else:
            print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
        return 0

    # --address before validation: on a cluster the local CPU count does not bound the actors.
    address = [f"ray.address={args.address}"] if getattr(args, "address", None) else []
    rounds = [f"iterate.rounds={args.rounds}"] if getattr(args, "rounds", None) is not None else []
    cfg = load_config(args.config, [*args.overrides, *address, *rounds, *columns])
    if args.command == "label":  # the labeling server needs no stage module (torch, vLLM): it starts in a second
        from raylhf.labeling.command import label_command

        return label_command(args, cfg)
    from raylhf.orchestration import preflight  # pulls pyarrow: not loaded for --help or `raylhf config`

    preflight.check_output_dir(cfg)
    storage = RunStorage.resolve(cfg.output_dir, cfg.name, cfg.staging_dir)
    storage.pull()  # a run kept at a URI continues from what is there
    try:
        return _run_command(args, cfg, RunPaths.for_config(storage.root, cfg, sync=storage.push), storage)
    finally:
        storage.push()  # also when the command failed: a later --resume continues from here


def _run_command(args, cfg, paths: RunPaths, storage: RunStorage) -> int:
    # The stages, checks and task pull numpy and pyarrow (and torch once a stage runs): not for --help.
    from raylhf.orchestration import collect_stage, eval_stages, preflight, stages
    from raylhf.tasks import load_task

    if args.command == "data":
        out = args.out or paths.data
        records = _records(paths, [(out, paths.data)])
        _start(cfg, records)
        summary = stages.stage_data(cfg, load_task(cfg.task), out)
        _report("data", stages.save_summary(records, "data", summary))
    elif args.command == "pretrain":
        preflight.check_pretrain_inputs(cfg, paths)
        _start(cfg, paths)
        _report("pretrain", stages.save_summary(paths, "pretrain", stages.stage_pretrain(cfg, paths, load_task(cfg.task))))
    elif args.command == "sft":
        model, data, out = args.model or paths.model("base"), args.data or paths.demonstrations, args.out or paths.model("sft")
        preflight.check_sft_inputs(cfg, model, data)
        records = _records(paths, [(out, paths.model("sft"))])
        _start(cfg, records)
        _report("sft", stages.save_summary(records, "sft", stages.stage_sft(cfg, records, model, data, out)))
    elif args.command == "rm":
        model, data, out = args.model or paths.model("sft"), args.data or paths.comparisons, args.out or paths.model("rm")
        # Normalisation needs demonstrations: a given file must exist, the run's own is used when present.
        demos = args.demonstrations or (paths.demonstrations if paths.demonstrations.exists() else None)
        preflight.check_rm_inputs(cfg, model, data, demos)
        records = _records(paths, [(out, paths.model("rm"))])
        _start(cfg, records)
        _report("rm", stages.save_summary(records, "rm", stages.stage_rm(cfg, records, model, data, out, demos)))
    elif args.command == "collect":
        key = "--policy" if args.policy else "collect.policies"
        policies = {p: stages.resolve_policy(paths, p, key) for p in (args.policy or cfg.collect.policies)}
        prompts = args.prompts or paths.prompts("train")
        seed_comparisons = paths.seed_comparisons if cfg.collect.include_seed_comparisons else None
        task = load_task(cfg.task)
        if task is None and cfg.collect.labeler == "simulated":
            raise ConfigError("collect.labeler: simulated is the task's labeler and task.name is none; rank the "
                              "samples yourself with collect.labeler=human")
        preflight.check_collect_inputs(cfg, policies, prompts, seed_comparisons)
        out = args.out or paths.comparisons
        records = _records(paths, [(out, paths.comparisons)])
        _start(cfg, records)
        # `raylhf label` finds the run's own batch; another output's by its path.
        label_flags = ("--out", str(out.expanduser().resolve())) if records is not paths else ()
        plan = collect_stage.first_round_plan(cfg, policies, prompts, out, seed_comparisons, label_flags)
        labeler = task.labeler(cfg.collect.labeler_seed) if task is not None else None
        summary = collect_stage.stage_collect(cfg, plan, labeler, args.wait)
        _report("collect", stages.save_summary(records, "collect", summary))
    elif args.command == "ppo":
        policy, rm, out = args.policy or paths.model("sft"), args.rm or paths.model("rm"), args.out or paths.model("ppo")
        # PPO's stage and checkpoint modules: only this command needs them.
        from raylhf.orchestration.ppo_checkpoint import PPOCheckpoint
        from raylhf.orchestration.ppo_stage import check_checkpoint_choice, run_ppo

        # The checkpoint follows the output too: `--out elsewhere/ppo --resume` continues elsewhere/ppo.records'.
        records = _records(paths, [(out, paths.model("ppo"))])
        # run_ppo repeats both checks, but only after _start below has written the run's config; a bad input
        # must leave the run directory untouched, so they run here first as well.
        preflight.check_ppo_inputs(cfg, paths, policy, rm)
        check_checkpoint_choice(PPOCheckpoint(records.root), cfg.ppo.total_steps, args.resume, args.fresh)
        _start(cfg, records)
        summary = run_ppo(cfg, records, policy, rm, out, resume=args.resume, fresh=args.fresh)
        _report("ppo", stages.save_summary(records, "ppo", summary))
    elif args.command == "rm-eval":
        sft, rm = args.sft or paths.model("sft"), args.rm or paths.model("rm")
        preflight.check_rm_eval_inputs(cfg, paths, sft, rm)
        # The evaluation describes the reward model; the SFT policy is only where its pairs are sampled from.
        records = _records(paths, [(rm, paths.model("rm"))])
        _start(cfg, records)
        _report("rm_eval", stages.save_summary(records, "rm_eval", eval_stages.stage_rm_eval(cfg, records, sft, rm)))
    elif args.command == "eval":
        policies = eval_stages.eval_policies(paths, args.policy)
        rm = args.rm or (paths.model("rm") if (paths.model("rm") / "config.json").exists() else None)
        preflight.check_eval_inputs(cfg, paths, policies, rm)
        # The run's evaluation scores the run's own models under their stage names; any other is another's.
        own = {name: paths.model(name) if name in ("base", "sft", "ppo") else None for name in policies}
        records = _records(paths, [*((path, own[name]) for name, path in policies.items()),
                                   *([(rm, paths.model("rm"))] if rm is not None else [])])
        _start(cfg, records)
        _report("eval", stages.save_summary(records, "eval", eval_stages.stage_eval(cfg, records, policies, rm)))
    elif args.command == "run":
        from raylhf.orchestration.pipeline import run_pipeline  # every stage's modules: only for a whole run

        from raylhf.orchestration.judge import check_judge

        preflight.check_iterate_prompts(cfg)
        preflight.check_run_inputs(cfg, paths)
        task = load_task(cfg.task)
        check_judge(cfg, paths, task, has_comparisons=paths.provided("comparisons") is not None or task is not None)
        _start(cfg, paths)
        t0 = time.time()
        run_pipeline(cfg, paths, report=_report, wait=args.wait)
        print(f"pipeline finished in {time.time() - t0:.0f} s; outputs in {storage}")
    elif args.command == "iterate":
        # The learners' checkpoint check and every stage's modules: only for a whole run.
        from raylhf.contracts.hf_checkpoint import require_checkpoint
        from raylhf.orchestration.pipeline import run_pipeline

        # Continues a run: the first round must have trained its policy (its finished stages are skipped).
        require_checkpoint(paths.model("ppo"), "the first round's PPO policy (run `raylhf run` first)", weights=True)
        preflight.check_iterate_prompts(cfg)
        _start(cfg, paths)
        t0 = time.time()
        run_pipeline(cfg, paths, report=_report, wait=args.wait)
        print(f"{cfg.iterate.rounds} rounds finished in {time.time() - t0:.0f} s; outputs in {storage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
