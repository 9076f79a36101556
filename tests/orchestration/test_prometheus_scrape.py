"""Live metrics of a real PPO run (real Ray, vLLM, models), scraped by a real Prometheus server."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

from cli_runs import SMALL  # noqa: E402  (tests/orchestration/conftest.py puts it on the path)

PROMETHEUS = os.environ.get("PROMETHEUS", "prometheus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def _wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stdout.read()[-4000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


@contextlib.contextmanager
def prometheus_server(workdir: Path, target: str):
    """A Prometheus of its own (own port, own storage) scraping `target` every second; yields its URL."""
    binary = shutil.which(PROMETHEUS)
    assert binary, "the prometheus server is not installed (`make prometheus` installs the Debian package)"
    workdir.mkdir(parents=True)
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                      "scrape_configs:\n  - job_name: raylhf\n    static_configs:\n"
                      f"      - targets: ['{target}']\n")
    port = _free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: proc.poll() is not None or _get(f"{url}/-/ready")[0] == 200, 60, "prometheus to start")
        assert proc.poll() is None, (workdir / "prometheus.log").read_text()[-3000:]
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _query(prom: str, expr: str) -> dict[frozenset, float]:
    """An instant PromQL query: {labels (without job/instance): value}."""
    status, body = _get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert status == 200, (expr, status, body[:500])
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return {frozenset((k, v) for k, v in r["metric"].items() if k not in ("job", "instance", "__name__")):
            float(r["value"][1]) for r in answer["data"]["result"]}


def _last(prom: str, series: str) -> float:
    """The newest value Prometheus scraped of one series (the endpoint is gone once the run ended)."""
    found = _query(prom, f"last_over_time({series}[30m])")
    assert len(found) == 1, (series, found)
    return next(iter(found.values()))


def test_prometheus_scrapes_a_live_ppo_run(pipeline_run, tmp_path):
    name, steps = "scraped", 4
    shutil.copytree(pipeline_run / "data", tmp_path / name / "data")
    models, metrics_port = pipeline_run / "models", _free_port()
    args = ["ppo", "--policy", str(models / "sft"), "--rm", str(models / "rm"), f"output_dir={tmp_path}",
            f"name={name}", *SMALL, f"ppo.total_steps={steps}", "ppo.eval_every=0",
            "metrics.enabled=true", f"metrics.port={metrics_port}", "metrics.linger_s=3"]
    run = tmp_path / name
    with prometheus_server(tmp_path / "prometheus", f"127.0.0.1:{metrics_port}") as prom:
        proc = subprocess.Popen([sys.executable, "-m", "raylhf", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env=dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0"))
        try:
            # While the stage runs, its endpoint's URL is in the run directory and Prometheus scrapes it.
            endpoint = run / "metrics_endpoint.txt"
            _wait_for(endpoint.exists, 300, "the metrics endpoint", proc)
            assert endpoint.read_text().strip() == f"http://127.0.0.1:{metrics_port}/metrics"
            _wait_for(lambda: _query(prom, 'up{job="raylhf"}') == {frozenset(): 1.0}, 60, "a scrape", proc)
            _wait_for(lambda: _query(prom, "raylhf_learner_step >= 1"), 300, "a learner step scraped", proc)
            out, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 0, out[-4000:]
        assert not endpoint.exists()  # removed with the endpoint
        summary = json.loads((run / "summaries" / "ppo.json").read_text())

        # Scraped while running, then the final figures: the stage ended with the endpoint's last values.
        assert _query(prom, "max_over_time(raylhf_ppo_running[30m])") == {frozenset(): 1.0}
        assert _last(prom, "raylhf_ppo_running") == 0
        (scrapes,) = _query(prom, "count_over_time(raylhf_learner_step[30m])").values()
        assert scrapes >= 2
        assert _last(prom, "raylhf_learner_step") == summary["steps"] == steps
        assert _last(prom, "raylhf_policy_version") == summary["final_version"]

        # Throughput: the counters rate() is computed from, and the run's own measure.
        assert _last(prom, "raylhf_samples_total") == summary["rollouts"] > 0
        wall = summary["wall_s"]
        assert _last(prom, "raylhf_tokens_total") / wall == pytest.approx(summary["tokens_per_s"], rel=1e-6)
        assert _last(prom, "raylhf_samples_per_second") == pytest.approx(summary["samples_per_s"], rel=1e-6)

        # Staleness: the histogram's buckets are the summary's histogram, accumulated.
        hist = {int(k): v for k, v in summary["staleness_histogram"].items()}
        max_staleness = 2  # SMALL's ppo.max_staleness
        for le in range(max_staleness + 1):
            below = sum(v for k, v in hist.items() if k <= le)
            assert _last(prom, f'raylhf_rollout_staleness_bucket{{le="{le}.0"}}') == below, (le, hist)
        assert _last(prom, 'raylhf_rollout_staleness_bucket{le="+Inf"}') == sum(hist.values()) == summary["rollouts"]
        assert _last(prom, "raylhf_rollout_staleness_sum") == sum(k * v for k, v in hist.items())

        # Phases, faults and the ledger, as the summary reports them.
        for phase, seconds in summary["phase_s"].items():
            assert _last(prom, f'raylhf_phase_seconds_total{{phase="{phase}"}}') == pytest.approx(seconds, abs=1e-3)
        for kind in ("generator", "learner", "scorer"):
            assert _last(prom, f'raylhf_actor_restarts_total{{kind="{kind}"}}') == summary[f"{kind}_restarts"]
        assert _last(prom, "raylhf_rollouts_trained_total") == summary["samples_trained"]
        assert _last(prom, "raylhf_rollouts_dropped_stale_total") == summary["samples_dropped_stale"]
        assert _last(prom, "raylhf_prompts_resubmitted_total") == summary["samples_resubmitted"]

        # The learner's figures of the last step, per-generator labels, the snapshot in the object store.
        assert _last(prom, "raylhf_reward") == pytest.approx(summary["final_reward"], rel=1e-6)
        assert _last(prom, "raylhf_kl") == pytest.approx(summary["final_kl"], rel=1e-6, abs=1e-12)
        versions = _query(prom, "last_over_time(raylhf_generator_policy_version[30m])")
        assert len(versions) == 1 and set(versions.values()) == {summary["final_version"]}  # generation.num_generators
        assert all(dict(labels)["generator"].startswith("generator") for labels in versions)
        weights = (run / "models" / "ppo" / "model.safetensors").stat().st_size
        assert 0.5 * weights < _last(prom, "raylhf_snapshot_bytes") < 1.5 * weights
