"""`report.md` and PNG plots of a run, from its summaries and `metrics.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raylhf.orchestration.paths import RunPaths


def _read_metrics(path: Path, stage: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("stage") == stage]


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return "—" if x is None else str(x)


def plot_ppo(paths: RunPaths) -> list[str]:
    """reward_kl.png (RM score, true utility, KL per learner step) and win_rate.png; returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _read_metrics(paths.metrics, "ppo") if "reward" in r]
    evals = [r for r in _read_metrics(paths.metrics, "ppo") if "eval_win_rate_vs_sft" in r]
    if not rows:
        return []
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(steps, [r["reward"] for r in rows], label="RM score (what PPO optimises)", alpha=0.8)
    axes[0].plot(steps, [r.get("true_utility", float("nan")) for r in rows], label="true utility (hidden labeler)",
                 alpha=0.8)
    axes[0].set_xlabel("learner step")
    axes[0].set_title("reward of training rollouts")
    axes[0].legend()
    axes[1].plot(steps, [r["kl"] for r in rows], color="tab:red")
    axes[1].set_xlabel("learner step")
    axes[1].set_title("KL(policy || SFT) per sequence")
    fig.tight_layout()
    fig.savefig(paths.root / "reward_kl.png", dpi=100)
    plt.close(fig)
    files = ["reward_kl.png"]
    if evals:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot([r["step"] for r in evals], [r["eval_win_rate_vs_sft"] for r in evals], marker="o")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("learner step")
        ax.set_ylabel("win rate vs SFT (held-out prompts)")
        ax.set_title("labeler preference over training")
        fig.tight_layout()
        fig.savefig(paths.root / "win_rate.png", dpi=100)
        plt.close(fig)
        files.append("win_rate.png")
    return files


def write_report(paths: RunPaths, summaries: dict[str, dict[str, Any]]) -> Path:
    lines = [f"# raylhf run `{paths.root.name}`", ""]
    ev = summaries.get("eval")
    if ev:
        lines += ["## Win rates (simulated labeler, ties count half)", "", "| comparison | held-out | generalization |",
                  "|---|---|---|"]
        splits = ev["win_rates"]
        for pair in splits.get("heldout", {}):
            lines.append(f"| {pair.replace('_vs_', ' vs ')} | {_fmt(splits['heldout'][pair])} | "
                         f"{_fmt(splits.get('generalization', {}).get(pair))} |")
        lines += ["", "## Policies on held-out prompts", ""]
        names = list(ev["policies"])
        fams = sorted(k for k in ev["policies"][names[0]]["heldout"]["follows"] if k != "all")
        lines += ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        def row(label, get):
            lines.append(f"| {label} | " + " | ".join(_fmt(get(ev['policies'][n])) for n in names) + " |")
        row("true utility (held-out)", lambda p: p["heldout"]["utility"])
        row("true utility (generalization)", lambda p: p["generalization"]["utility"])
        row("follows instruction, all (held-out)", lambda p: p["heldout"]["follows"]["all"])
        for f in fams:
            row(f"follows: {f}", lambda p, f=f: p["heldout"]["follows"].get(f))
        row("follows instruction, all (generalization)", lambda p: p["generalization"]["follows"]["all"])
        row("mean words per response", lambda p: p["heldout"]["mean_words"])
        row("RM score (held-out)", lambda p: p["heldout"].get("rm_score"))
        row("LM loss on held-out pretraining text", lambda p: p.get("pretrain_heldout_loss"))
        lines.append("")
    rm = summaries.get("rm_eval")
    if rm:
        lines += ["## Reward model (pairwise accuracy against the labeler on held-out prompts)", "",
                  "| split | RM | ceiling (noiseless utility) | RM / ceiling | SFT log-prob baseline |", "|---|---|---|---|---|"]
        for split in ("heldout", "generalization"):
            s = rm[split]
            lines.append(f"| {split} | {_fmt(s['rm_accuracy'])} | {_fmt(s['ceiling_accuracy'])} | "
                         f"{_fmt(s['rm_vs_ceiling'])} | {_fmt(s['sft_logprob_accuracy'])} |")
        if "rm_accuracy_equal_length" in rm["heldout"]:
            s = rm["heldout"]
            lines += ["", "On held-out pairs of two responses of equal token length (length cannot explain a "
                      f"preference there): RM {_fmt(s['rm_accuracy_equal_length'])}, ceiling "
                      f"{_fmt(s['ceiling_accuracy_equal_length'])}, SFT log-prob "
                      f"{_fmt(s['sft_logprob_accuracy_equal_length'])}; an RM near 0.5 there has learned little "
                      "beyond length."]
        lines.append("")
    ppo = summaries.get("ppo")
    if ppo:
        lines += ["## PPO-ptx", ""]
        if "rollouts" in ppo:
            lines += [
                f"- learner steps: {ppo['steps']}, rollouts: {ppo['rollouts']}, samples/s: {_fmt(ppo['samples_per_s'], 1)}",
                f"- final RM score: {_fmt(ppo.get('final_reward'))}, final KL to SFT per sequence: {_fmt(ppo.get('final_kl'))}",
                f"- generator busy {_fmt(ppo['generator_busy'], 2)}, learner busy {_fmt(ppo['learner_busy'], 2)}; "
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
    lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    for stage, s in summaries.items():
        if isinstance(s, dict) and "seconds" in s:
            lines.append(f"| {stage} | {s['seconds']:.0f} |")
    paths.report.write_text("\n".join(lines) + "\n")
    return paths.report
