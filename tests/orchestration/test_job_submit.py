"""The README's cluster commands on a real `ray start --head`: `ray job submit` of a PPO run, its outputs in the
absolute `output_dir`, and `ray job stop` leaving no actor alive.

The head uses ports and a temporary directory of its own, so it runs beside the suite's local Ray; it is
torn down by killing the processes of its own session directory (`ray stop` would stop every Ray here).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cli_runs import SMALL

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the checkout's environment: `ray` and `raylhf` as the README activates them


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray(*args, env, check=True, timeout=300):
    out = subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    if check:
        assert out.returncode == 0, f"ray {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _kill_session(temp_dir: str) -> None:
    """Kill every process started for the head whose temporary directory is `temp_dir` (and only those)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or ()):
                proc.send_signal(signal.SIGKILL)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@pytest.fixture(scope="module")
def head():
    """`ray start --head` with its own ports and temp dir; yields (dashboard address, environment)."""
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    gcs, dash, agent, agent_grpc, metrics, client, env_agent, node_mgr, obj_mgr = _free_ports(9)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    _ray("start", "--head", f"--port={gcs}", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--ray-client-server-port={client}", f"--runtime-env-agent-port={env_agent}",
         f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}", "--min-worker-port=0",
         "--max-worker-port=0", f"--temp-dir={temp_dir}", "--disable-usage-stats", env=env)
    try:
        yield f"http://127.0.0.1:{dash}", dict(env, RAY_ADDRESS=f"http://127.0.0.1:{dash}")
    finally:
        _kill_session(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _alive_actors(dashboard: str, env) -> list[dict]:
    out = _ray("list", "actors", "--address", dashboard, "--format", "json", "--filter", "state=ALIVE", env=env)
    if "No resource in the cluster" in out.stdout:  # what it prints when nothing matches
        return []
    return json.loads(out.stdout[out.stdout.find("["):])  # after any warning lines


def _trained(run: Path) -> bool:
    """Whether the PPO stage has logged a learner step."""
    metrics = run / "metrics.jsonl"
    return metrics.exists() and any(r.get("stage") == "ppo" and "reward" in r
                                    for r in map(json.loads, metrics.read_text().splitlines()))


def test_submitted_ppo_job_writes_to_output_dir_and_stop_leaves_no_actor(pipeline_run, head, tmp_path):
    dashboard, env = head
    shutil.copytree(pipeline_run / "data", tmp_path / "job" / "data")
    models = pipeline_run / "models"
    # The README's command, from the repository root, with a run long enough to be stopped mid-way.
    submit = _ray("job", "submit", "--no-wait", "--working-dir", ".", "--", "raylhf", "ppo",
                  "--policy", str(models / "sft"), "--rm", str(models / "rm"), "ray.address=auto",
                  f"output_dir={tmp_path}", "name=job", *SMALL, "ppo.total_steps=1000", "ppo.eval_every=0",
                  env=env, timeout=600)
    job_id = re.search(r"raysubmit_\w+", submit.stdout + submit.stderr).group(0)
    run = tmp_path / "job"
    deadline = time.time() + 600
    while not _trained(run):
        status = _ray("job", "status", job_id, env=env, check=False).stdout
        assert "FAILED" not in status and time.time() < deadline, _ray("job", "logs", job_id, env=env, check=False).stdout[-4000:]
        time.sleep(2)
    # The run lands where output_dir says (not in the job's private copy of the working directory).
    assert (run / "config.yaml").exists()
    assert _alive_actors(dashboard, env), "the job's actors should be running"

    _ray("job", "stop", job_id, env=env, timeout=120)
    deadline = time.time() + 120
    while (alive := _alive_actors(dashboard, env)) and time.time() < deadline:
        time.sleep(1)
    assert alive == [], [a.get("class_name") for a in alive]
    assert "was stopped" in _ray("job", "status", job_id, env=env).stdout
