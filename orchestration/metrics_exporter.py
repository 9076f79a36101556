"""Live Prometheus metrics of the PPO stage, exported by the driver process.

The driver already holds every figure of the run: the learner's metrics come back with each train step,
the fault counts from the sample ledger, the generator set and the reward pool, the phase seconds from
its `PhaseTimer`, the queue depths from its pipeline. So one exporter in the driver covers the whole
system, with no agent in the actors: `PPOMetrics` is a `StepObserver` (updated after every learner step)
and a Prometheus collector (read at every scrape) on its own `CollectorRegistry`; `serve_ppo_metrics`
runs its HTTP endpoint for the length of the stage. A figure that belongs to one actor carries its name
as a label (`generator="generator-0"`); restarts carry the actor's kind.

Counters never go down. The driver's figures are cumulative, and a counter adds what each one grew by
since the last update; when the learner is restored from a checkpoint the ledger's counts go back with
it, and the counters count the redone work again from there, as it was done again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily, Metric)
from prometheus_client.utils import floatToGoString

from raylhf.configs.schema import MetricsConfig
from raylhf.contracts.supervision import ACTOR_KINDS, restarts_key
from raylhf.orchestration.run_stats import LoopState, RunStats

log = logging.getLogger(__name__)

ENDPOINT_FILE = "metrics_endpoint.txt"  # in the run directory while the endpoint is up: its URL

# Learner metrics (keys of `PPOLearner.train_step`'s dict) exported as gauges of the newest step.
LEARNER_GAUGES = {
    "reward": ("raylhf_reward", "Mean reward of the newest trained batch (after normalisation and clipping)."),
    "kl": ("raylhf_kl", "Mean per-sequence KL(pi_old || pi_ref) of the newest trained batch."),
    "kl_coef": ("raylhf_kl_coef", "KL penalty coefficient beta used for the newest trained batch."),
    "entropy": ("raylhf_entropy", "Mean per-token entropy of the policy on the newest trained batch (nats)."),
    "clipfrac": ("raylhf_clip_fraction", "Fraction of response tokens whose probability ratio was clipped."),
    "policy_loss": ("raylhf_policy_loss", "Clipped PPO surrogate loss of the newest step."),
    "value_loss": ("raylhf_value_loss", "Clipped value loss of the newest step."),
    "approx_kl": ("raylhf_approx_kl", "Approximate KL(pi_old || pi_theta) moved by the newest step."),
    "ptx_loss": ("raylhf_ptx_loss", "Pretraining LM loss of the newest step (with ppo.ptx_coef > 0)."),
    "step_time_s": ("raylhf_learner_step_seconds", "Seconds the learner spent in its newest train step."),
}

# Cumulative counts of the driver's per-step metrics (and of `RunStats.accounting`) exported as counters.
COUNT_COUNTERS = {
    "samples_trained": ("raylhf_rollouts_trained", "Rollouts the learner trained on."),
    "samples_dropped_stale": ("raylhf_rollouts_dropped_stale",
                              "Rollouts dropped for being more than ppo.max_staleness versions old."),
    "samples_rejected": ("raylhf_rollouts_rejected", "Rollouts the reward service quarantined (unscorable)."),
    "samples_refused": ("raylhf_prompts_refused", "Prompts a generator refused (empty, too long)."),
    "samples_resubmitted": ("raylhf_prompts_resubmitted",
                            "Prompts handed again to the replacement of a lost generator."),
}
RESTARTS = {kind: restarts_key(kind) for kind in ACTOR_KINDS}  # the driver's metric keys, by actor kind


def object_store_bytes(ref: Any) -> int | None:
    """Size of an object in the Ray object store, looked up without fetching it (None if unknown)."""
    from ray.experimental import get_object_locations

    found = get_object_locations([ref], timeout_ms=2000).get(ref)
    return None if found is None else int(found["object_size"])


class PPOMetrics:
    """The PPO stage's figures as Prometheus metrics on `self.registry`; a `StepObserver` of the driver.

    Args:
        max_staleness: `ppo.max_staleness`; the staleness histogram has a bucket per version up to it
            (the `+Inf` bucket adds the rollouts dropped as stale).
        run, mode: run name and `ppo.mode`, exported as `raylhf_run_info` labels.
        measure: size in bytes of an object-store ref (replaceable in tests).

    `watch(driver.loop_state)` before the first step; `finish(driver.loop_state())` when the loop ended.
    """

    def __init__(self, *, max_staleness: int, run: str = "", mode: str = "",
                 measure: Callable[[Any], int | None] = object_store_bytes):
        self.registry = CollectorRegistry()
        self._buckets = list(range(max_staleness + 1))
        self._info = {"run": run, "mode": mode}
        self._measure = measure
        self._probe: Callable[[], LoopState] | None = None
        self._learner: dict[str, float] = {}
        self._counts: dict[str, float] = {}  # the newest fault and ledger counts
        self._step, self._version, self._running = 0, 0, 1
        self._raw: dict[tuple, float] = {}  # (name, labels) -> newest cumulative figure seen
        self._totals: dict[tuple, float] = {}  # (name, labels) -> what the counter exports
        self._snapshot: tuple[Any, int] = (None, 0)  # (ref, bytes) of the newest snapshot measured
        # Built by the driver's thread after each update, read whole by the scrape thread: never mutated
        # after it is published, so the scrape sees one step's figures, all consistent.
        self._families: list[Metric] = []
        self._refresh(None)
        self.registry.register(self)

    def watch(self, probe: Callable[[], LoopState]) -> None:
        """Read the loop's state from `probe` (the driver's `loop_state`) at each update."""
        self._probe = probe

    # -- StepObserver ---------------------------------------------------------------------------------
    def on_rollouts(self, batch) -> None:
        pass

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        self._step, self._version = step, int(metrics.get("version", self._version))
        self._learner.update({k: float(metrics[k]) for k in LEARNER_GAUGES if k in metrics})
        self._take_counts(metrics)
        self._refresh(self._probe() if self._probe is not None else None)

    def on_rewind(self, step: int) -> None:
        self._step = step
        self._refresh(self._probe() if self._probe is not None else None)

    def finish(self, state: LoopState) -> None:
        """The loop ended: its final figures (phases up to the last weight load, the run's accounting)."""
        self._step, self._version, self._running = state.stats.steps, state.stats.final_version, 0
        self._take_counts(state.stats.accounting)
        self._refresh(state)

    def _take_counts(self, figures: dict[str, Any]) -> None:
        self._counts.update({k: float(figures[k]) for k in (*COUNT_COUNTERS, *RESTARTS.values()) if k in figures})

    # -- Prometheus collector -------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        return iter(self._families)

    # -- building the families ------------------------------------------------------------------------
    def _total(self, name: str, labels: tuple[str, ...], figure: float) -> float:
        """The counter for a cumulative figure: grows by what the figure grew since the last update."""
        key = (name, labels)
        grown = figure - self._raw.get(key, 0.0)
        self._raw[key] = figure
        self._totals[key] = self._totals.get(key, 0.0) + max(grown, 0.0)
        return self._totals[key]

    def _counter(self, name: str, doc: str, figure: float | dict[str, float], label: str | None = None):
        if label is None:
            family = CounterMetricFamily(name, doc, value=self._total(name, (), figure))
        else:
            family = CounterMetricFamily(name, doc, labels=[label])
            for value, fig in sorted(figure.items()):
                family.add_metric([value], self._total(name, (value,), fig))
        return family

    @staticmethod
    def _gauge(name: str, doc: str, value: float | dict[str, float], label: str | None = None):
        if label is None:
            return GaugeMetricFamily(name, doc, value=value)
        family = GaugeMetricFamily(name, doc, labels=[label])
        for key, v in sorted(value.items()):
            family.add_metric([key], v)
        return family

    def _snapshot_bytes(self, ref: Any) -> int:
        if ref is not None and ref is not self._snapshot[0]:
            try:
                size = self._measure(ref)
            except Exception as e:  # a lookup that fails (its owner was lost) must not stop the run
                log.debug("could not measure the weight snapshot: %s", e)
                size = None
            if size is not None:
                self._snapshot = (ref, size)
        return self._snapshot[1]

    def _refresh(self, state: LoopState | None) -> None:
        stats = state.stats if state is not None else RunStats()
        wall = max(stats.wall_s, 1e-9)
        counts = self._counts
        f: list[Metric] = [
            InfoMetricFamily("raylhf_run", "The run this PPO stage belongs to.", value=self._info),
            self._gauge("raylhf_ppo_running", "1 while the PPO loop runs, 0 once it finished.", self._running),
            self._counter("raylhf_samples", "Rollouts handed to the learner (trained on or dropped as stale).",
                          stats.rollouts),
            self._counter("raylhf_tokens", "Response tokens of the rollouts handed to the learner.",
                          stats.response_tokens),
            self._gauge("raylhf_samples_per_second", "Rollouts handed to the learner per second since the loop "
                        "started (the summary's samples_per_s).", stats.rollouts / wall if stats.wall_s else 0.0),
            self._gauge("raylhf_tokens_per_second", "Response tokens handed to the learner per second since the "
                        "loop started.", stats.response_tokens / wall if stats.wall_s else 0.0),
            self._counter("raylhf_phase_seconds", "Wall seconds the driver loop spent in each phase "
                          "(generate, score, train, publish, apply_weights, checkpoint, ...).", stats.phases, "phase"),
            self._counter("raylhf_actor_busy_seconds", "Seconds actors spent working, by kind: generate calls "
                          "(summed over generators), scoring requests (summed over scorers) and train steps.",
                          {"generator": stats.generator_busy_s, "scorer": stats.scorer_busy_s,
                           "learner": stats.learner_busy_s}, "kind"),
            self._counter("raylhf_actor_restarts", "Actors replaced after dying, failing or hanging, by kind.",
                          {kind: counts.get(key, 0.0) for kind, key in RESTARTS.items()}, "kind"),
            *[self._counter(name, doc, counts.get(key, 0.0)) for key, (name, doc) in COUNT_COUNTERS.items()],
            self._counter("raylhf_rollouts_in_flight_updated", "Rollouts handed to the learner whose generation "
                          "spanned a weight update (generation.weight_updates: in_flight).",
                          stats.rollouts_in_flight_updated),
            self._gauge("raylhf_learner_step", "Learner steps completed.", self._step),
            self._gauge("raylhf_policy_version", "Newest published policy version.", self._version),
            self._staleness(stats),
        ]
        f += [self._gauge(LEARNER_GAUGES[k][0], LEARNER_GAUGES[k][1], v) for k, v in self._learner.items()]
        if state is not None:
            f += [
                self._gauge("raylhf_rollouts_in_system", "Rollouts taken and not yet trained, dropped or rejected "
                            "(bounded by ppo.buffer_size).", state.rollouts_in_system),
                self._gauge("raylhf_pipeline_rollouts", "Rollouts waiting at each hop: generated and not yet sent "
                            "to the reward pool (to_score), being scored, scored and buffered for the learner, in "
                            "the learner's running step (training).", state.depths, "place"),
                self._gauge("raylhf_generate_calls_in_flight", "Generate calls queued on each generator.",
                            state.generate_calls, "generator"),
                self._gauge("raylhf_generator_policy_version", "Policy version of the weights each generator holds.",
                            state.generator_versions, "generator"),
                self._gauge("raylhf_snapshot_bytes", "Object-store bytes of the newest published weight snapshot.",
                            self._snapshot_bytes(state.snapshot_ref)),
            ]
        self._families = f

    def _staleness(self, stats) -> HistogramMetricFamily:
        hist = stats.staleness
        buckets, below = [], 0
        for le in self._buckets:
            below += hist.get(le, 0)
            buckets.append((floatToGoString(le), below))
        buckets.append(("+Inf", sum(hist.values())))
        return HistogramMetricFamily("raylhf_rollout_staleness", "Policy versions between sampling a rollout and "
                                     "the learner receiving it.", buckets=buckets,
                                     sum_value=sum(k * v for k, v in hist.items()))


class MetricsEndpoint:
    """An HTTP endpoint serving `registry` on `cfg.host:cfg.port` (a free port for 0); its URL is logged and
    written to `endpoint_file` until `close`."""

    def __init__(self, cfg: MetricsConfig, registry: CollectorRegistry, endpoint_file: Path | None = None):
        self.cfg, self.endpoint_file = cfg, endpoint_file
        self._server, self._thread = start_http_server(cfg.port, addr=cfg.host, registry=registry)
        port = self._server.server_address[1]
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.url = f"http://{host}:{port}/metrics"
        if endpoint_file is not None:
            endpoint_file.write_text(self.url + "\n")
        log.info("Prometheus metrics at %s", self.url)

    def close(self, linger: bool = False) -> None:
        """Stop serving; with `linger`, after `cfg.linger_s` seconds (a scraper reads the final values)."""
        if linger and self.cfg.linger_s > 0:
            time.sleep(self.cfg.linger_s)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        if self.endpoint_file is not None:
            self.endpoint_file.unlink(missing_ok=True)


@contextlib.contextmanager
def serve_ppo_metrics(cfg: MetricsConfig, run_dir: Path, *, max_staleness: int, run: str = "",
                      mode: str = "") -> Iterator[PPOMetrics | None]:
    """`PPOMetrics` served over HTTP while the block runs, lingering `cfg.linger_s` after a block that ended
    without an error; None (and nothing served) unless `cfg.enabled`."""
    if not cfg.enabled:
        yield None
        return
    metrics = PPOMetrics(max_staleness=max_staleness, run=run, mode=mode)
    endpoint = MetricsEndpoint(cfg, metrics.registry, run_dir / ENDPOINT_FILE)
    finished = False
    try:
        yield metrics
        finished = True
    finally:
        endpoint.close(linger=finished)

