"""The PPO stage's Prometheus exporter, fed by hand: names, types, labels, values, the HTTP endpoint."""

import collections
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from raylhf.configs.schema import MetricsConfig, RunConfig
from raylhf.orchestration.run_stats import LoopState, RunStats
from raylhf.orchestration.metrics_exporter import (ENDPOINT_FILE, MetricsEndpoint, PPOMetrics, serve_ppo_metrics)

README = Path(__file__).resolve().parents[2] / "README.md"


def _state(rollouts=16, tokens=96, wall_s=4.0, staleness=None, phases=None, accounting=None, version=2,
           snapshot_ref=None):
    stats = RunStats(steps=2, rollouts=rollouts, response_tokens=tokens, wall_s=wall_s, generator_busy_s=5.0,
                     scorer_busy_s=2.5, learner_busy_s=1.5, staleness=collections.Counter(staleness or {0: 10, 1: 5, 3: 1}),
                     phases=phases or {"score": 0.5, "train": 1.25, "publish": 0.25}, final_version=version,
                     accounting=accounting or {})
    return LoopState(stats, rollouts_in_system=24, depths={"to_score": 8, "scoring": 8, "buffered": 0, "training": 8},
                     generate_calls={"generator-0": 2, "generator-1": 1},
                     generator_versions={"generator-0": 2, "generator-1": 1}, snapshot_ref=snapshot_ref)


STEP = {"reward": 0.5, "kl": 0.125, "kl_coef": 0.2, "entropy": 3.0, "clipfrac": 0.25, "value_loss": 0.75,
        "policy_loss": -0.1, "approx_kl": 0.01, "step_time_s": 0.4, "version": 2, "samples_trained": 15,
        "samples_dropped_stale": 1, "samples_rejected": 2, "samples_refused": 3, "samples_resubmitted": 4,
        "generator_restarts": 1, "learner_restarts": 0, "scorer_restarts": 2, "accounting_balanced": True}


def _scrape(registry) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of everything the registry exports."""
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _types(registry) -> dict[str, str]:
    text = generate_latest(registry).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def test_step_figures_become_named_typed_labelled_metrics():
    sizes = []
    exporter = PPOMetrics(max_staleness=2, run="demo", mode="async", measure=lambda ref: sizes.append(ref) or 4096)
    state = _state(snapshot_ref="ref-2")
    exporter.watch(lambda: state)
    exporter.on_step(2, STEP)
    got = _scrape(exporter.registry)

    def value(name, **labels):
        return got[(name, tuple(sorted(labels.items())))]

    # Throughput: counters from which rate() is computed, and the run's own measure so far.
    assert value("raylhf_samples_total") == 16 and value("raylhf_tokens_total") == 96
    assert value("raylhf_samples_per_second") == 16 / 4.0 and value("raylhf_tokens_per_second") == 96 / 4.0
    # Seconds per phase of the driver loop and of the actors' own work.
    assert value("raylhf_phase_seconds_total", phase="train") == 1.25
    assert value("raylhf_phase_seconds_total", phase="publish") == 0.25
    assert value("raylhf_actor_busy_seconds_total", kind="generator") == 5.0
    assert value("raylhf_actor_busy_seconds_total", kind="scorer") == 2.5
    assert value("raylhf_actor_busy_seconds_total", kind="learner") == 1.5
    # Depths, by hop and by generator; the weights each generator holds.
    assert value("raylhf_rollouts_in_system") == 24 and value("raylhf_pipeline_rollouts", place="scoring") == 8
    assert value("raylhf_generate_calls_in_flight", generator="generator-1") == 1
    assert value("raylhf_generator_policy_version", generator="generator-0") == 2
    # Staleness histogram: cumulative buckets 0..max_staleness; +Inf adds the rollouts dropped as stale (3 behind).
    assert [value("raylhf_rollout_staleness_bucket", le=le) for le in ("0.0", "1.0", "2.0", "+Inf")] == [10, 15, 15, 16]
    assert value("raylhf_rollout_staleness_count") == 16 and value("raylhf_rollout_staleness_sum") == 5 + 3
    # Faults and the ledger.
    assert value("raylhf_actor_restarts_total", kind="generator") == 1
    assert value("raylhf_actor_restarts_total", kind="scorer") == 2
    assert value("raylhf_actor_restarts_total", kind="learner") == 0
    assert value("raylhf_rollouts_dropped_stale_total") == 1 and value("raylhf_rollouts_rejected_total") == 2
    assert value("raylhf_prompts_resubmitted_total") == 4 and value("raylhf_prompts_refused_total") == 3
    assert value("raylhf_rollouts_trained_total") == 15
    # The learner.
    assert value("raylhf_learner_step") == 2 and value("raylhf_policy_version") == 2
    assert value("raylhf_reward") == 0.5 and value("raylhf_kl") == 0.125 and value("raylhf_entropy") == 3.0
    assert value("raylhf_clip_fraction") == 0.25 and value("raylhf_value_loss") == 0.75
    assert value("raylhf_learner_step_seconds") == 0.4
    assert ("raylhf_ptx_loss", ()) not in got  # never reported by this learner (ppo.ptx_coef = 0)
    # The weight snapshot, measured once per published ref.
    assert value("raylhf_snapshot_bytes") == 4096
    exporter.on_step(3, STEP)
    assert sizes == ["ref-2"]
    assert value("raylhf_run_info", run="demo", mode="async") == 1 and value("raylhf_ppo_running") == 1

    types = _types(exporter.registry)
    assert all(n.startswith("raylhf_") for n in types)
    # Counters and only counters end in _total; base units in the names (seconds, bytes).
    assert {n for n, t in types.items() if t == "counter"} == {n for n in types if n.endswith("_total")}
    assert types["raylhf_rollout_staleness"] == "histogram" and types["raylhf_snapshot_bytes"] == "gauge"
    assert types["raylhf_phase_seconds_total"] == "counter"


def test_counters_never_go_down_and_finish_reports_the_final_figures():
    exporter = PPOMetrics(max_staleness=4)
    state = {"now": _state(rollouts=8)}
    exporter.watch(lambda: state["now"])
    exporter.on_step(1, dict(STEP, samples_dropped_stale=3, generator_restarts=0))
    # The learner was restored from a checkpoint: the ledger's count goes back with it, then grows again.
    exporter.on_rewind(0)
    exporter.on_step(1, dict(STEP, samples_dropped_stale=1, generator_restarts=0))
    exporter.on_step(2, dict(STEP, samples_dropped_stale=2, generator_restarts=1))
    got = _scrape(exporter.registry)
    assert got[("raylhf_rollouts_dropped_stale_total", ())] == 3 + 1  # 3, then the redone work's 1 more
    assert got[("raylhf_actor_restarts_total", (("kind", "generator"),))] == 1
    assert got[("raylhf_learner_step", ())] == 2

    final = _state(rollouts=24, wall_s=6.0, accounting={"samples_dropped_stale": 2, "learner_restarts": 1},
                   phases={"train": 2.0, "apply_weights": 0.5}, version=3)
    exporter.finish(final)
    got = _scrape(exporter.registry)
    assert got[("raylhf_ppo_running", ())] == 0 and got[("raylhf_policy_version", ())] == 3
    assert got[("raylhf_samples_total", ())] == 24 and got[("raylhf_samples_per_second", ())] == 24 / 6.0
    assert got[("raylhf_phase_seconds_total", (("phase", "apply_weights"),))] == 0.5
    assert got[("raylhf_actor_restarts_total", (("kind", "learner"),))] == 1
    assert got[("raylhf_snapshot_bytes", ())] == 0  # nothing published


def test_endpoint_serves_on_loopback_writes_its_url_and_stops(tmp_path):
    exporter = PPOMetrics(max_staleness=1)
    cfg = MetricsConfig(enabled=True)
    assert cfg.host == "127.0.0.1" and cfg.port == 0  # loopback and a free port unless configured
    endpoint = MetricsEndpoint(cfg, exporter.registry, tmp_path / ENDPOINT_FILE)
    try:
        url = (tmp_path / ENDPOINT_FILE).read_text().strip()
        assert url == endpoint.url and re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url)
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "raylhf_samples_total 0.0" in body and "raylhf_learner_step 0.0" in body
    finally:
        endpoint.close()
    assert not (tmp_path / ENDPOINT_FILE).exists()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_metrics_are_off_by_default_and_serve_only_inside_the_stage(tmp_path):
    assert RunConfig().metrics.enabled is False
    with serve_ppo_metrics(RunConfig().metrics, tmp_path, max_staleness=1) as live:
        assert live is None and not (tmp_path / ENDPOINT_FILE).exists()
    with serve_ppo_metrics(MetricsConfig(enabled=True), tmp_path, max_staleness=1, run="r", mode="sync") as live:
        url = (tmp_path / ENDPOINT_FILE).read_text().strip()
        assert "raylhf_run_info" in urllib.request.urlopen(url, timeout=5).read().decode()
    assert not (tmp_path / ENDPOINT_FILE).exists()


def test_readme_lists_every_exported_metric():
    exporter = PPOMetrics(max_staleness=1, measure=lambda ref: 1)
    exporter.watch(lambda: _state(snapshot_ref="ref"))
    exporter.on_step(1, dict(STEP, ptx_loss=2.0))
    exported = set(_types(exporter.registry))
    text = README.read_text()
    table = text[text.index("### Live metrics"):]
    documented = set(re.findall(r"^\| `(raylhf_\w+)(?:\{[^`]*\})?` \|", table, re.M))
    assert documented == exported
