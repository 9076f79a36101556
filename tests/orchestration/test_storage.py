"""Run storage: paths, `file://` URIs, and an S3 URI served by a real S3-protocol server (moto) on loopback."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raylhf.configs.loader import ConfigError
from raylhf.orchestration.storage import RunStorage, is_remote_uri, local_output_dir

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_uri(tmp_path_factory):
    """`s3://runs-bucket/runs?...` on a moto S3 server of this test's own, with its bucket created."""
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    assert server, "moto_server missing: `make test` installs the test extra (moto[server])"
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "moto server did not start"
                time.sleep(0.2)
        import pyarrow.fs as pafs

        options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        fs, _ = pafs.FileSystem.from_uri(f"s3://runs-bucket?{options}&allow_bucket_creation=true")
        fs.create_dir("runs-bucket")
        yield f"s3://runs-bucket/runs?{options}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_uri(s3_uri: str, name: str) -> str:
    """The URI of run `name` under `s3_uri` (whose query string carries the server's address)."""
    base, options = s3_uri.split("?", 1)
    return f"{base}/{name}?{options}"


def _remote_files(uri: str) -> dict[str, bytes]:
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(base) + 1:]] = f.read()
    return out


def test_paths_and_file_uris_are_local(tmp_path):
    assert RunStorage.resolve("runs", "demo").root == Path("runs") / "demo"
    assert RunStorage.resolve(f"file://{tmp_path}", "demo").root == tmp_path / "demo"
    assert RunStorage.resolve(f"file://{tmp_path}", "demo").uri is None
    assert local_output_dir("~/runs") == Path.home() / "runs"
    assert [is_remote_uri(u) for u in ("s3://b/p", "gs://b", "file:///x", "runs", "/abs", "C://x")] == [
        True, True, False, False, False, False]


def test_a_uri_pyarrow_cannot_open_names_the_key():
    with pytest.raises(ConfigError, match="output_dir: 'nosuchscheme://x/y' is not a storage URI"):
        RunStorage.resolve("nosuchscheme://x/y", "demo")


def test_push_mirrors_and_pull_restores(s3_uri, tmp_path):
    run = RunStorage.resolve(s3_uri, "mirror", staging_dir=str(tmp_path / "a"))
    assert run.uri == "s3://runs-bucket/runs/mirror" and run.root.is_relative_to(tmp_path / "a")
    (run.root / "models" / "sft").mkdir(parents=True)
    (run.root / "models" / "sft" / "config.json").write_text("{}")
    (run.root / "metrics.jsonl").write_text("row 1\n")
    assert run.push() == 2
    assert run.push() == 0  # nothing changed: nothing sent again
    (run.root / "metrics.jsonl").write_text("row 1\nrow 2\n")
    (run.root / "models" / "sft" / "config.json").unlink()  # e.g. a checkpoint replaced by a newer one
    assert run.push() == 2
    assert _remote_files(_run_uri(s3_uri, "mirror")) == {"metrics.jsonl": b"row 1\nrow 2\n"}

    elsewhere = RunStorage.resolve(s3_uri, "mirror", staging_dir=str(tmp_path / "b"))  # a fresh head node
    assert elsewhere.pull() == 1 and (elsewhere.root / "metrics.jsonl").read_text() == "row 1\nrow 2\n"
    assert elsewhere.pull() == 0 and elsewhere.push() == 0


@pytest.mark.slow  # trains (two steps)
def test_cli_keeps_a_run_at_an_s3_uri_and_continues_it_elsewhere(s3_uri, tmp_path):
    small = ["name=s3run", "task.n_train_prompts=20", "task.n_heldout_prompts=5", "task.n_generalization_prompts=5",
             "task.n_pretrain_docs=40", "pretrain.steps=2", "pretrain.batch_size=4", "pretrain.seq_len=32",
             "pretrain.warmup_steps=1", "collect.n_prompts=10", "iterate.rounds=0", "torch_threads=1"]
    env = dict(os.environ, **CREDENTIALS)

    def raylhf(*args, staging):
        out = subprocess.run([sys.executable, "-m", "raylhf", *args, f"output_dir={s3_uri}",
                              f"staging_dir={tmp_path / staging}", *small], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]

    raylhf("data", "demo", staging="head1")
    files = _remote_files(_run_uri(s3_uri, "s3run"))
    assert {"config.yaml", "data/prompts_train.jsonl", "data/corpus_train.jsonl", "summaries/data.json"} <= set(files)
    # Another machine with an empty working copy: the data comes from the URI, the model goes back to it.
    raylhf("pretrain", staging="head2")
    files = _remote_files(_run_uri(s3_uri, "s3run"))
    assert "models/base/config.json" in files and "summaries/pretrain.json" in files
    assert not (tmp_path / "runs").exists()
