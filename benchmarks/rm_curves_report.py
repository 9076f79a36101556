"""Tables, summaries and the plot of `bench_rm_curves.py`: pairwise accuracies with standard errors clustered by
group, per curve, per kind of contrast and per instruction family."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

SPLITS = ("heldout", "generalization")


def clustered_accuracy(scores: Sequence[Sequence[float]], pairs: Sequence[tuple[int, int, int]]
                       ) -> tuple[float, float, int]:
    """Accuracy of `scores` on ranked `pairs` (group, winner, loser; a tie counts half), its standard error
    clustered by group (sqrt(sum_g (a_g - p n_g)^2) / N, a_g agreements and n_g pairs of group g), and N."""
    agree: dict[int, float] = {}
    count: dict[int, int] = {}
    for g, w, l in pairs:
        s = scores[g]
        agree[g] = agree.get(g, 0.0) + (1.0 if s[w] > s[l] else 0.5 if s[w] == s[l] else 0.0)
        count[g] = count.get(g, 0) + 1
    n = sum(count.values())
    if not n:
        return float("nan"), float("nan"), 0
    p = sum(agree.values()) / n
    return p, math.sqrt(sum((agree[g] - p * count[g]) ** 2 for g in count)) / n, n


def summarise(task, scored: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`pair_accuracies` per source and split, with clustered errors of every scorer's overall and
    equal-length accuracy and the equal-length accuracy per instruction family."""
    from raylhf.orchestration.evaluation import agreement_table
    from raylhf.orchestration.eval_stages import pair_accuracies

    out: dict[str, Any] = {}
    for source, by_split in scored.items():
        for split, sp in by_split.items():
            s = pair_accuracies(task, sp)
            ranked = sp.ranked()
            equal = [ranked[i] for i in sp.equal_length(ranked)]
            s["se"] = {name: {"all": clustered_accuracy(g, ranked)[1], "equal_length": clustered_accuracy(g, equal)[1]}
                       for name, g in sp.scores.items()}
            s["equal_length_pairs"] = len(equal)
            s["by_family_equal_length"] = agreement_table(
                sp.scores, equal, [task.family(sp.comparisons[g].prompt) for g, _, _ in equal])
            out.setdefault(source, {})[split] = s
    return out


def _cell(s: dict, name: str, key: str) -> str:
    acc = s.get(f"{name}_accuracy{'_equal_length' if key == 'equal_length' else ''}")
    if acc is None:
        return "—"
    se = s["se"][name]["equal_length" if key == "equal_length" else "all"]
    return f"{acc:.3f}±{se:.3f}"


def _contrast(s: dict, name: str, kind: str, table: str = "by_contrast") -> str:
    v = s.get(table, {}).get(kind, {}).get(name)
    return "—" if v is None else f"{v:.3f}"


def curve_table(title: str, points: list[dict], summary: dict, split: str = "heldout") -> list[str]:
    sft, cur = summary["sft"][split], summary.get("current", {}).get(split)
    head = ("| point | init | prompts | K | responses | train s | acc | acc equal-length | correct vs wrong "
            "| correct vs wrong, equal length | concise vs rambling |" + (" current policy: acc | equal length |"
                                                                        if cur else ""))
    lines = [f"### {title} (held-out split `{split}`; SFT samples" + (", and the current policy's" if cur else "")
             + ")", "", head, "|" + "---|" * (head.count("|") - 1)]
    for p in points:
        n = p["name"]
        row = (f"| {n} | {p['init']} | {p['rows']} | {p['k']} | {p['responses']} | {p['train_s']:.0f} | "
               if "train_s" in p else f"| {n} | — | — | — | — | — | ")
        row += (f"{_cell(sft, n, 'all')} | {_cell(sft, n, 'equal_length')} | {_contrast(sft, n, 'correct_vs_wrong')} "
                f"| {_contrast(sft, n, 'correct_vs_wrong', 'by_contrast_equal_length')} "
                f"| {_contrast(sft, n, 'concise_vs_rambling')} |")
        if cur:
            row += f" {_cell(cur, n, 'all')} | {_cell(cur, n, 'equal_length')} |"
        lines.append(row)
    return lines


def family_table(summary: dict, names: list[str], split: str = "heldout", source: str = "sft") -> list[str]:
    fams = summary[source][split]["by_family_equal_length"]
    cols = [n for n in ["ceiling", "sft_logprob", *names] if any(n in v for v in fams.values())]
    lines = [f"### Equal-length accuracy per instruction family ({source} samples, `{split}`)", "",
             "| family | pairs | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for fam, v in fams.items():
        lines.append(f"| {fam} | {v['pairs']} | " + " | ".join(f"{v[c]:.3f}" if c in v else "—" for c in cols) + " |")
    return lines


def report(results: dict[str, Any], task, scored: dict, curves: dict[str, list[Any]], t_start: float,
           out: Path) -> list[str]:
    """Summarise what is measured so far into `results`, write it to `out` and return the tables."""
    results["summary"] = summarise(task, scored)
    results["curves"] = {c: [p.name for p in ps if p.name in results["points"]] for c, ps in curves.items()}
    results["wall_s"] = time.time() - t_start
    refs = [{"name": n} for n in ("ceiling", "sft_logprob", *results["references"])]
    lines: list[str] = []
    for curve, names in results["curves"].items():
        if names:
            lines += curve_table(curve, [results["points"][n] for n in names] + refs, results["summary"]) + [""]
    if results.get("logprob_mix"):  # `--logprob-mix`: every reward model + w x the SFT log-prob
        mixes = [{"name": f"{n}+logprob"} for n in results["logprob_mix"]]
        lines += curve_table("SFT log-prob mix", refs[:2] + mixes, results["summary"]) + [""]
    scorers = results["summary"]["sft"]["heldout"]["se"]
    fam_names = [n for n in ("demo-rm", "sft-1x", "sft-8x", "base-tiny-4x", "random-small-4x",
                             *results["curves"].get("recipe", [])) if n in scorers]
    fam_names = list(dict.fromkeys(fam_names))
    for split in SPLITS:
        lines += family_table(results["summary"], fam_names, split) + [""]
    if "pretrain_cost" in results:
        pc = results["pretrain_cost"]
        lines.append(f"pretraining step: tiny {pc['tiny']['step_s']:.3f} s ({pc['tiny']['parameters']:,} parameters), "
                     f"small {pc['small']['step_s']:.3f} s ({pc['small']['parameters']:,}): {pc['ratio']:.1f}x; "
                     f"the demo's tiny stages {({k: round(v) for k, v in pc['demo_tiny_s'].items() if v})} s -> "
                     f"small {({k: round(v) for k, v in pc['small_estimate_s'].items()})} s")
    lines.append(f"eval sampling {results['eval_sample_s']:.0f} s; total {results['wall_s']:.0f} s")
    results["tables"] = lines
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    return lines


def point_steps(p: dict) -> int:
    """Optimiser steps of a point (recorded since `steps` was; older results: from its rows and `rm.*`, with the
    defaults of one epoch of 16 prompts and 10 % of the prompts held out)."""
    if "steps" in p:
        return p["steps"]
    rm = {"epochs": 1, "batch_prompts": 16, **p.get("rm", {})}
    return int(rm["epochs"]) * math.ceil((p["rows"] - int(p["rows"] * 0.1)) / int(rm["batch_prompts"]))


def plot_steps(files: Sequence[Path], out: Path) -> Path:
    """Held-out accuracy (overall and on equal-length pairs of SFT samples, with standard errors) of every
    SFT-initialised point on all of round 0's rankings against its optimiser steps, beside the ceiling and the
    SFT log-prob: what more steps, learning rates and batch sizes buy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    refs: dict[str, dict] = {}
    for f in files:
        r = json.loads(Path(f).read_text())
        s = r["summary"]["sft"]["heldout"]
        refs = refs or s
        for name, p in r["points"].items():
            if not name.startswith("sft-8x"):
                continue
            x, lr = point_steps(p), p.get("rm", {}).get("lr", 3e-4)
            color = {3e-4: "C0", 1e-3: "C1", 3e-3: "C3"}.get(lr, "gray")  # gray: the linear probe
            for ax, key, se in ((axes[0], "_accuracy", "all"), (axes[1], "_accuracy_equal_length", "equal_length")):
                ax.errorbar(x, s[name + key], yerr=s["se"][name][se], fmt="o", capsize=3, color=color,
                            label=f"lr {lr:g}" if color != "gray" else "linear probe (trunk frozen)")
    for ax, key, title in ((axes[0], "_accuracy", "all pairs"), (axes[1], "_accuracy_equal_length",
                                                                  "pairs of equal token length")):
        for ref, style in (("ceiling", "--"), ("sft_logprob", ":")):
            ax.axhline(refs[ref + key], linestyle=style, color="gray", label=ref.replace("_", " "))
        ax.axhline(0.5, color="lightgray", linewidth=0.8)
        ax.set(xscale="log", xlabel="optimiser steps (16 or 4 prompts each, 1 or 4 epochs)",
               ylabel="held-out pairwise accuracy", title=title)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), loc="upper left", fontsize=7, ncol=2)
    fig.suptitle("Reward model on SFT samples (held-out prompts): accuracy against optimiser steps")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
