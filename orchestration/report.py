"""`report.md` and PNG plots of a run, from its summaries and `metrics.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The object-oriented API, not pyplot: it renders with Agg into a file without choosing a backend for the
# whole process (a caller's notebook keeps its own) and keeps no global figure to close.
from matplotlib.figure import Figure

from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.provenance import check_summaries


def _read_metrics(path: Path, stage: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("stage") == stage]


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return "—" if x is None else str(x)


def _get(d: Any, *keys: str) -> Any:
    """`d[k1][k2]...`, or None where a level is missing (a run without a task has no utility, ...)."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def win_se(win: float | None, n: int | None) -> float | None:
    """Standard error of a win rate over `n` prompts (binomial; ties make it a little smaller)."""
    return (win * (1 - win) / n) ** 0.5 if win is not None and n else None


def _win(win: float | None, n: int | None) -> str:
    se = win_se(win, n)
    return _fmt(win) + (f" ± {se:.3f}" if se is not None else "")


def judge_label(judge: str | None) -> str:
    """How the report names the evaluation's judge (`judge` of the eval summary)."""
    if judge is None:
        return "none"
    if judge == "labeler":
        return "the task's labeler of eval.labeler_seed, not the one whose rankings trained the reward model"
    if judge.startswith("rm:"):
        return (f"the held-out judge reward model `{judge[3:]}`, trained on a disjoint share of the comparisons "
                "(eval.judge_share) that the run's reward model never saw")
    return f"the ranker `{judge}`"


def plot_ppo(paths: RunPaths) -> list[str]:
    """reward_kl.png (RM score, true utility when the task has one, KL per learner step) and win_rate.png;
    returns file names."""
    rows = [r for r in _read_metrics(paths.metrics, "ppo") if "reward" in r]
    evals = [r for r in _read_metrics(paths.metrics, "ppo") if "eval_win_rate_vs_sft" in r]
    if not rows:
        return []
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    axes[0].plot(steps, [r["reward"] for r in rows], label="RM score (what PPO optimises)", alpha=0.8)
    if any("true_utility" in r for r in rows):  # only a task knows the true utility
        axes[0].plot(steps, [r.get("true_utility", float("nan")) for r in rows],
                     label="true utility (hidden labeler)", alpha=0.8)
    axes[0].set_xlabel("learner step")
    axes[0].set_title("reward of training rollouts")
    axes[0].legend()
    axes[1].plot(steps, [r["kl"] for r in rows], color="tab:red")
    axes[1].set_xlabel("learner step")
    axes[1].set_title("KL(policy || SFT) per sequence")
    fig.tight_layout()
    fig.savefig(paths.root / "reward_kl.png", dpi=100)
    files = ["reward_kl.png"]
    if evals:
        fig = Figure(figsize=(5.5, 4))
        ax = fig.subplots()
        ax.plot([r["step"] for r in evals], [r["eval_win_rate_vs_sft"] for r in evals], marker="o")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("learner step")
        ax.set_ylabel("win rate vs SFT (held-out prompts)")
        ax.set_title("labeler preference over training")
        fig.tight_layout()
        fig.savefig(paths.root / "win_rate.png", dpi=100)
        files.append("win_rate.png")
    return files


def write_report(paths: RunPaths, summaries: dict[str, dict[str, Any]],
                 rounds: dict[int, dict[str, dict[str, Any]]] | None = None) -> Path:
    """`report.md` of round 0's `summaries` and, with iteration `rounds` ({round: its summaries}), a table
    and plots per round. What a summary lacks is left out: a run without a task has no true utility,
    instruction following or labeler rows. A summary that no longer describes the model in place is refused
    (`provenance.SummaryMismatch`) before anything is written."""
    check_summaries(paths, summaries)
    for r, round_summaries in (rounds or {}).items():
        check_summaries(paths.round(r), round_summaries)
    lines = [f"# raylhf run `{paths.root.name}`", ""]
    if rounds:
        lines += round_section(paths, {0: summaries, **rounds})
    ev = summaries.get("eval")
    if ev:
        lines += eval_section(ev)
    lines += reward_model_section(summaries)
    ppo = summaries.get("ppo")
    if ppo:
        lines += ppo_section(paths, ppo)
    lines += skipped_rows_section({"": summaries, **{f"round {r} ": s for r, s in (rounds or {}).items()}})
    lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    for stage, s in summaries.items():
        if isinstance(s, dict) and "seconds" in s:
            lines.append(f"| {stage} | {s['seconds']:.0f} |")
    for r, round_summaries in (rounds or {}).items():
        seconds = {stage: s["seconds"] for stage, s in round_summaries.items() if "seconds" in s}
        lines.append(f"| round {r}: {', '.join(seconds)} | {sum(seconds.values()):.0f} "
                     f"({', '.join(f'{v:.0f}' for v in seconds.values())}) |")
    paths.report.write_text("\n".join(lines) + "\n")
    return paths.report


def eval_section(ev: dict[str, Any]) -> list[str]:
    """Win rates by the judge (± one standard error) and a table of every policy on held-out prompts, with the
    rows and split columns the evaluation has."""
    # An evaluation from before judges were configurable was judged by the labeler.
    judge = ev.get("judge", "labeler")
    wins = ev.get("win_rates", {})
    splits = [s for s in ("heldout", "generalization") if wins.get(s)]
    lines = []
    if splits:
        lines += ["## Win rates (ties count half, ± one standard error)", "", f"Judge: {judge_label(judge)}.", "",
                  "| comparison | " + " | ".join(SPLIT_NAMES[s] for s in splits) + " |", "|---|" + "---|" * len(splits)]
        for pair in wins[splits[0]]:
            lines.append(f"| {pair.replace('_vs_', ' vs ')} | " + " | ".join(
                _win(wins[s].get(pair), _get(ev, "n_prompts", s)) for s in splits) + " |")
    elif judge is None:
        lines += ["## Win rates", "", "No judge (no task labeler and no held-out judge reward model): win rates are "
                  "left out."]
    policies = ev.get("policies") or {}
    if not policies:
        return lines
    lines += ["", "## Policies on held-out prompts", ""]
    names = list(policies)
    lines += ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, *keys: str) -> None:
        values = [_get(policies[n], *keys) for n in names]
        if any(v is not None for v in values):  # a metric no policy has is not a row of dashes
            lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in values) + " |")

    row("true utility (held-out)", "heldout", "utility")
    row("true utility (generalization)", "generalization", "utility")
    row("follows instruction, all (held-out)", "heldout", "follows", "all")
    families = dict.fromkeys(f for n in names for f in (_get(policies[n], "heldout", "follows") or {}) if f != "all")
    for f in sorted(families):
        row(f"follows: {f}", "heldout", "follows", f)
    row("follows instruction, all (generalization)", "generalization", "follows", "all")
    row("mean words per response", "heldout", "mean_words")
    row("mean tokens per response", "heldout", "mean_tokens")
    row("RM score (held-out)", "heldout", "rm_score")
    row("KL to SFT per response (held-out, on its own samples)", "heldout", "kl_to_sft")
    row("LM loss on held-out pretraining text", "pretrain_heldout_loss")
    lines.append("")
    return lines


SPLIT_NAMES = {"heldout": "held-out", "generalization": "generalization"}


def reward_model_section(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """The reward models' pairwise accuracy on their held-out comparisons (the run's and the judge's), and
    with a task, against the labeler on held-out prompts (`rm_eval`)."""
    lines = []
    for stage, what in (("rm", "the run's reward model"), ("judge_rm", "the held-out judge reward model")):
        s = summaries.get(stage)
        if not s:
            continue
        if "provided" in s:
            lines.append(f"- {what}: yours (`{s['provided']}`), used as it is")
            continue
        line = (f"- {what}: pairwise accuracy {_fmt(s.get('val_accuracy'))} on held-out comparisons "
                f"({_fmt(s.get('val_pairs'), 0)} pairs of {_fmt(s.get('val_prompts'))} prompts), trained on "
                f"{_fmt(s.get('train_prompts'))} prompts")
        if stage == "rm" and s.get("comparisons_left_out"):
            line += f"; the held-out judge's {s['comparisons_left_out']} comparisons left out"
        if stage == "judge_rm":
            line += f" (eval.judge_share = {_fmt(s.get('judge_share'), 2)})"
        lines.append(line)
    if lines:
        lines = ["## Reward model on held-out comparisons", "", *lines, ""]
    rm = summaries.get("rm_eval")
    if rm:
        lines += ["## Reward model (pairwise accuracy against the labeler on held-out prompts)", "",
                  "| split | RM | ceiling (noiseless utility) | RM / ceiling | SFT log-prob baseline |", "|---|---|---|---|---|"]
        for split in ("heldout", "generalization"):
            s = rm.get(split)
            if s:
                lines.append(f"| {split} | {_fmt(s['rm_accuracy'])} | {_fmt(s['ceiling_accuracy'])} | "
                             f"{_fmt(s['rm_vs_ceiling'])} | {_fmt(s['sft_logprob_accuracy'])} |")
        if "rm_accuracy_equal_length" in rm.get("heldout", {}):
            s = rm["heldout"]
            lines += ["", "On held-out pairs of two responses of equal token length (length cannot explain a "
                      f"preference there): RM {_fmt(s['rm_accuracy_equal_length'])}, ceiling "
                      f"{_fmt(s['ceiling_accuracy_equal_length'])}, SFT log-prob "
                      f"{_fmt(s['sft_logprob_accuracy_equal_length'])}; an RM near 0.5 there has learned little "
                      "beyond length."]
        lines.append("")
    return lines


def ppo_section(paths: RunPaths, ppo: dict[str, Any]) -> list[str]:
    lines = ["## PPO-ptx", ""]
    if "rollouts" in ppo:
        lines += [
            f"- learner steps: {ppo['steps']}, rollouts: {ppo['rollouts']}, samples/s: {_fmt(ppo['samples_per_s'], 1)}",
            f"- final RM score: {_fmt(ppo.get('final_reward'))}, final KL to SFT per sequence: {_fmt(ppo.get('final_kl'))}",
            f"- generator busy {_fmt(ppo['generator_busy'], 2)}, scorer busy {_fmt(ppo.get('scorer_busy'), 2)}, "
            f"learner busy {_fmt(ppo['learner_busy'], 2)}; "
            f"staleness histogram {ppo['staleness_histogram']}",
            f"- generators hold the learner's newest weights at the end: {ppo['generators_match_learner']}"]
    else:
        lines.append(f"- learner steps: {ppo['steps']} (finished from its last checkpoint)")
    if "samples_taken" in ppo:
        lines += [
            f"- samples: {ppo['samples_taken']} prompts taken, {ppo.get('samples_trained', 0)} rollouts trained, "
            f"{ppo.get('samples_dropped_stale', 0)} dropped as stale, {ppo.get('samples_rejected', 0)} quarantined "
            f"by the reward service (`rejects.jsonl`), {ppo.get('samples_refused', 0)} prompts refused, "
            f"{ppo.get('samples_resubmitted', 0)} resubmitted after a lost generator, "
            f"{ppo.get('samples_reissued', 0)} reissued after a restore; balanced: {ppo.get('accounting_balanced')}",
            f"- actors replaced: {ppo.get('generator_restarts', 0)} generators, {ppo.get('scorer_restarts', 0)} "
            f"scorers, {ppo.get('learner_restarts', 0)} learners"]
        for f in ppo.get("faults", []):
            lines.append(f"  - {f['actor']} {f['kind']} at {f['at_s']:.0f} s ({f['cause']}): healed in "
                         f"{f['heal_s']:.1f} s, {f['lost_steps']} steps redone, {f['resubmitted']} prompts resubmitted")
    lines.append("")
    for name in plot_ppo(paths):
        lines.append(f"![{name}]({name})")
    lines.append("")
    return lines


def skipped_rows_section(by_label: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Rows the stages skipped under `data.on_bad_rows: skip` (their summaries' `skipped_rows`: file -> reason ->
    count), one line per file and reason with the stages that skipped them; nothing when none were."""
    found: dict[tuple[str, str], dict[str, int]] = {}
    for label, summaries in by_label.items():
        for stage, s in summaries.items():
            for file, reasons in ((s or {}).get("skipped_rows") or {}).items():
                for reason, n in reasons.items():
                    found.setdefault((file, reason), {})[label + stage] = n
    if not found:
        return []
    lines = ["## Skipped rows", "", "Rows left out under `data.on_bad_rows: skip`, per file and reason (a file several "
             "stages read is counted by each of them).", "", "| file | reason | rows | stages |", "|---|---|---|---|"]
    for (file, reason), by_stage in sorted(found.items()):
        counts = set(by_stage.values())
        n = str(counts.pop()) if len(counts) == 1 else ", ".join(f"{st} {c}" for st, c in by_stage.items())
        cell = reason.replace("|", "\\|").replace("\n", " ")  # a reason must not break the table
        lines.append(f"| `{file}` | {cell} | {n} | {', '.join(by_stage)} |")
    lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------- rounds
def round_rows(paths: RunPaths, by_round: dict[int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row of headline numbers per round (round 0 is the first pipeline), from its summaries and metrics:
    what the per-round table and plots show. Missing numbers (a round still running) are None."""
    rows = []
    for r, s in sorted(by_round.items()):
        # The policy a round ends with and the one it started from, as its evaluation names them.
        policy, previous = ("ppo", "sft") if r == 0 else (f"round{r}", f"round{r - 1}")
        rm, ev = s.get("rm_eval") or {}, s.get("eval") or {}
        held = rm.get("heldout", {})
        current = (rm.get("current") or {}).get("heldout", held)  # round 0 continues SFT: its pairs are SFT's
        wins = ev.get("win_rates", {}).get("heldout", {})
        pol = ev.get("policies", {}).get(policy, {})
        n = ev.get("n_prompts", {}).get("heldout")
        win = wins.get(f"{policy}_vs_sft")
        kl = [m["kl"] for m in _read_metrics(paths.round(r).metrics, "ppo") if "kl" in m]
        contrast = held.get("by_contrast_equal_length", {})
        rows.append({
            "round": r,
            "comparisons": (s.get("collect") or {}).get("total"),
            "rm_accuracy": held.get("rm_accuracy"),
            "rm_accuracy_equal_length": held.get("rm_accuracy_equal_length"),
            "rm_accuracy_current": current.get("rm_accuracy"),
            "rm_accuracy_current_equal_length": current.get("rm_accuracy_equal_length"),
            "ceiling_current": current.get("ceiling_accuracy"),
            "sft_logprob_current": current.get("sft_logprob_accuracy"),
            "rm_correct_vs_wrong_equal_length": contrast.get("correct_vs_wrong", {}).get("rm"),
            "win_vs_sft": win,
            "win_vs_sft_se": win_se(win, n),
            "win_vs_previous": wins.get(f"{policy}_vs_{previous}"),
            "utility": pol.get("heldout", {}).get("utility"),
            "sft_utility": ev.get("policies", {}).get("sft", {}).get("heldout", {}).get("utility"),
            "follows": pol.get("heldout", {}).get("follows", {}).get("all"),
            "words": pol.get("heldout", {}).get("mean_words"),
            "kl": sum(kl[-10:]) / len(kl[-10:]) if kl else None,  # the last 10 learner steps: one step is noisy
            "lm_loss": pol.get("pretrain_heldout_loss"),
        })
    return rows


def round_section(paths: RunPaths, by_round: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    rows = round_rows(paths, by_round)
    lines = ["## Iterated RLHF, per round", "",
             "Round 0 is the first pipeline (comparisons on the SFT policy); round r ranks samples of round r-1's "
             "policy on fresh prompts, retrains the reward model on every comparison so far and continues PPO-ptx "
             "from round r-1's policy (KL to SFT). RM accuracy is on held-out pairs sampled from SFT and from the "
             "policy the round's PPO continues (where PPO uses the RM); win rates are the evaluation judge's (see "
             "Win rates), with their standard error.", "",
             "| round | comparisons | RM acc (SFT pairs) | equal length | RM acc (current policy's pairs) "
             "| equal length | ceiling / SFT log-prob there | win vs SFT | win vs previous round | true utility "
             "| follows | words | KL to SFT | LM loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        win = _fmt(row["win_vs_sft"])
        if row["win_vs_sft_se"] is not None:
            win += f" ± {row['win_vs_sft_se']:.3f}"
        lines.append(
            f"| {row['round']} | {_fmt(row['comparisons'])} | {_fmt(row['rm_accuracy'])} | "
            f"{_fmt(row['rm_accuracy_equal_length'])} | {_fmt(row['rm_accuracy_current'])} | "
            f"{_fmt(row['rm_accuracy_current_equal_length'])} | {_fmt(row['ceiling_current'])} / "
            f"{_fmt(row['sft_logprob_current'])} | {win} | {_fmt(row['win_vs_previous'])} | {_fmt(row['utility'])} | "
            f"{_fmt(row['follows'])} | {_fmt(row['words'], 2)} | {_fmt(row['kl'])} | {_fmt(row['lm_loss'])} |")
    sft_utility = next((row["sft_utility"] for row in rows if row["sft_utility"] is not None), None)
    lines += ["", f"SFT's true utility on the same prompts: {_fmt(sft_utility)}."]
    for r, s in sorted(by_round.items()):
        current = ((s.get("rm_eval") or {}).get("current") or {}).get("heldout", {})
        if "previous_rm_accuracy" in current:
            lines.append(f"On round {r}'s pairs of its current policy the previous round's reward model scores "
                         f"{_fmt(current['previous_rm_accuracy'])} (equal length "
                         f"{_fmt(current.get('previous_rm_accuracy_equal_length'))}), the new one "
                         f"{_fmt(current['rm_accuracy'])} ({_fmt(current.get('rm_accuracy_equal_length'))}).")
    lines.append("")
    latest = max(by_round)
    contrast = ((by_round[latest].get("rm_eval") or {}).get("current") or by_round[latest].get("rm_eval") or {})
    table = contrast.get("heldout", {}).get("by_contrast_equal_length")
    if table:
        lines += [f"Round {latest}'s reward model on equal-length held-out pairs of the policy it trains, by what "
                  "separates the two responses:", "", "| contrast | pairs | RM | ceiling | SFT log-prob |",
                  "|---|---|---|---|---|"]
        for kind, v in table.items():
            lines.append(f"| {kind.replace('_', ' ')} | {v['pairs']} | {_fmt(v.get('rm'))} | "
                         f"{_fmt(v.get('ceiling'))} | {_fmt(v.get('sft_logprob'))} |")
        lines.append("")
    name = plot_rounds(paths, rows)
    if name:
        lines += [f"![{name}]({name})", ""]
    return lines


def plot_rounds(paths: RunPaths, rows: list[dict[str, Any]]) -> str | None:
    """rounds.png: RM accuracy, win rate vs SFT, true utility, KL and response length per round."""
    if not rows:
        return None
    x = [row["round"] for row in rows]

    def series(key: str) -> list[float]:
        return [float("nan") if row[key] is None else row[key] for row in rows]

    fig = Figure(figsize=(22, 4))
    axes = fig.subplots(1, 5)
    ax = axes[0]
    for key, label in (("rm_accuracy", "SFT pairs"), ("rm_accuracy_equal_length", "SFT pairs, equal length"),
                       ("rm_accuracy_current", "current policy's pairs"),
                       ("rm_accuracy_current_equal_length", "current policy's pairs, equal length")):
        ax.plot(x, series(key), marker="o", label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_title("reward-model accuracy (held-out)")
    ax.legend(fontsize=7)
    axes[1].errorbar(x, series("win_vs_sft"), yerr=[e or 0 for e in series("win_vs_sft_se")], marker="o", capsize=3)
    axes[1].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[1].set_title("win rate vs SFT (held-out)")
    axes[2].plot(x, series("utility"), marker="o", label="policy")
    axes[2].plot(x, [r["sft_utility"] if r["sft_utility"] is not None else float("nan") for r in rows], ls="--",
                 color="grey", label="SFT")
    axes[2].set_title("true utility (held-out)")
    axes[2].legend(fontsize=7)
    axes[3].plot(x, series("kl"), marker="o", color="tab:red")
    axes[3].set_title("KL to SFT per sequence (last steps)")
    axes[4].plot(x, series("words"), marker="o", color="tab:green")
    axes[4].set_title("mean words per response")
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_xticks(x)
    fig.tight_layout()
    fig.savefig(paths.root / "rounds.png", dpi=100)
    return "rounds.png"
