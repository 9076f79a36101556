"""The collect stage with people ranking (`collect.labeler: human`): the round's samples become a batch in the
labeling folder beside its comparisons file (`raylhf.labeling.store`), `raylhf label` serves it, and the round
goes on once enough of it is ranked.

`human_comparisons` is the seam: the batch is written once by the sample step it is given (a resumed run never
samples again), then the labels log decides. Not enough rankings yet: `RankingsPending` (the command exits with
status 5 and says how to rank them), or with `wait` a poll every `label.poll_s` seconds. Enough: the labels'
comparisons (one per standing ranking, with its labeler and ties) are the round's rows.

Light on purpose (no torch, Ray or vLLM): the command line maps `RankingsPending` to its exit status.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from raylhf.configs.loader import DEFAULT_PRESET
from raylhf.configs.schema import LabelConfig, RunConfig
from raylhf.contracts.dataio import DataError
from raylhf.contracts.records import Comparison
from raylhf.labeling import store
from raylhf.labeling.command import LOCAL_LABELER, load_labelers

log = logging.getLogger(__name__)


class RankingsPending(Exception):
    """A round's batch waits for human rankings. The command line turns it into exit status 5 and one line
    naming the `raylhf label` command (`message`) that serves the batch."""

    def __init__(self, round_: int, progress: store.Progress, output_dir: str, name: str,
                 label_flags: Sequence[str] = ()):
        self.round, self.progress = round_, progress
        self.output_dir, self.name, self.label_flags = output_dir, name, list(label_flags)
        super().__init__(self.message())

    def command(self, config: str = DEFAULT_PRESET, overrides: Sequence[str] = ()) -> str:
        """`raylhf label` for this run's batch: the run's config file and `label.*` overrides, its output
        directory and name, and how to find the batch (`--round R`, or `--out F` for a collect beside the run)."""
        parts = ["raylhf", "label", *(["--config", config] if config != DEFAULT_PRESET else []),
                 f"output_dir={self.output_dir}", f"name={self.name}", *self.label_flags,
                 *(o for o in overrides if o.startswith("label."))]
        return " ".join(shlex.quote(p) for p in parts)

    def message(self, config: str = DEFAULT_PRESET, overrides: Sequence[str] = ()) -> str:
        p = self.progress
        return (f"round {self.round} has {p.ranked_items} of {p.items} items ranked; rank them with: "
                f"{self.command(config, overrides)}")


def labeler_ids(cfg: LabelConfig) -> list[str]:
    """The labelers the batch is assigned to: the ids of `label.labelers`, else the one local labeler."""
    labelers = load_labelers(cfg.labelers)
    return sorted(labelers) if labelers is not None else [LOCAL_LABELER]


def enough(cfg: LabelConfig, progress: store.Progress) -> bool:
    """Whether the round can go on: `label.min_rankings` items ranked, or (unset) every assignment answered.
    Once every assignment is answered nothing more will come, so the round goes on with what it has."""
    everything = progress.answered >= progress.assigned
    return everything or (cfg.min_rankings is not None and progress.ranked_items >= cfg.min_rankings)


def human_comparisons(cfg: RunConfig, out: Path, round_: int, sample: Callable[[], list[store.BatchItem]],
                      wait: bool = False, label_flags: Sequence[str] = ()) -> tuple[list[Comparison], dict[str, Any]]:
    """The comparisons people ranked for the collect output `out`, and their counts for the stage's summary.

    The batch is `sample()`, written once into `labeling_dir(out)`; a batch already there is kept (a resumed run
    ranks what it sampled before). `label_flags` tell `raylhf label` where the batch is (`RankingsPending`)."""
    folder = store.labeling_dir(out)
    if not (folder / store.BATCH_FILE).is_file():
        items = sample()
        if not items:
            raise DataError(out, "", "no prompt got two distinct responses: nothing to rank")
        store.write_batch(folder, items)
        log.info("round %d: wrote a batch of %d items to rank to %s", round_, len(items), folder / store.BATCH_FILE)
    ids = labeler_ids(cfg.label)
    progress = store.progress(folder, ids, cfg.label.overlap)
    while not enough(cfg.label, progress):
        pending = RankingsPending(round_, progress, cfg.output_dir, cfg.name, label_flags)
        if not wait:
            raise pending
        log.info("waiting for human rankings: %s", pending.message())
        while True:
            time.sleep(cfg.label.poll_s)
            latest = store.progress(folder, ids, cfg.label.overlap)
            if latest != progress:  # a line per change, not per poll
                progress = latest
                break
    rows = store.comparisons(folder)
    if not rows:
        raise DataError(folder / store.LABELS_FILE, "", f"every assignment of round {round_} is answered but none "
                        "ranked (skipped, flagged or all tied): nothing to train on; undo some in raylhf label")
    kinds = [e["event"] for e in store.current(store.read_events(folder)).values()]
    per_labeler = {labeler: sum(c.labeler == labeler for c in rows) for labeler in sorted({c.labeler for c in rows})}
    return rows, {"labeler": "human", "items": progress.items, "rankings": progress.rankings,
                  "ranked_items": progress.ranked_items, "skipped": kinds.count("skip"), "flagged": kinds.count("flag"),
                  "tied_rows": sum(any(c.tied or []) for c in rows), "labelers": per_labeler,
                  "labels": str(folder.expanduser().resolve())}
