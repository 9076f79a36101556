"""`raylhf label`: find the run's pending batch, then serve it to the labelers or print their statistics.

Imports only the light modules (config, storage paths, the labeling package): the command starts in about a
second, without torch, Ray or vLLM.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import re
import secrets
import signal
import sys
from pathlib import Path

import yaml

from raylhf.configs.loader import ConfigError
from raylhf.labeling import stats, store
from raylhf.labeling.server import LabelingApp, LabelingServer, Mirror
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.storage import RunStorage

LOCAL_LABELER = "local"
LOCAL_TOKEN_FILE = "local.token"
LOCK_FILE = "server.lock"
LABELER_ID = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_TOKEN_CHARS = 16
TOKEN = re.compile(r"[A-Za-z0-9._~-]{%d,256}" % MIN_TOKEN_CHARS)


def label_command(args: argparse.Namespace, cfg) -> int:
    storage = RunStorage.resolve(cfg.output_dir, cfg.name, cfg.staging_dir)
    storage.pull()  # a run kept at a URI: its batch and any labels so far
    paths = RunPaths.for_config(storage.root, cfg, sync=storage.push)
    folder = find_batch(paths, cfg, args.round, args.out)
    labelers = load_labelers(cfg.label.labelers)
    if args.stats:
        ids = sorted(set(labelers or {}) | {e["labeler"] for e in store.read_events(folder)})
        report = stats.labeling_stats(folder, ids, cfg.label.overlap)
        print(json.dumps(report, indent=2) if args.json else stats.format_stats(report))
        return 0
    host = args.host or cfg.label.host
    port = cfg.label.port if args.port is None else args.port
    if labelers is None:
        if not _loopback(host):
            key = "--host" if args.host else "label.host"
            raise ConfigError(f"label.labelers: serving on {host} ({key}) needs a labelers file (labeler id -> token); "
                              f"without one only 127.0.0.1 is served")
        labelers = {LOCAL_LABELER: _local_token(folder)}
    return serve(folder, labelers, host, port, cfg, storage, "--port" if args.port is not None else "label.port")


def serve(folder: Path, labelers: dict[str, str], host: str, port: int, cfg, storage: RunStorage,
          port_key: str = "label.port") -> int:
    """Serve the labeling folder until Ctrl-C or SIGTERM; every acknowledged label is on disk by then."""
    lock = _serve_alone(folder)  # two servers on one log would number their labels twice
    mirror = Mirror(storage.push) if storage.uri else None
    app = LabelingApp(folder, labelers, cfg.label.metadata, cfg.label.flags, cfg.label.overlap, on_append=mirror)
    try:
        server = LabelingServer((host, port), app, cfg.label.max_body_bytes)
    except OSError as e:
        raise ConfigError(f"{port_key}: cannot serve on {host}:{port}: {e.strerror or e}") from e
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill`: close like Ctrl-C
    base = f"http://{f'[{host}]' if ':' in host else host}:{server.port}/"
    progress = store.progress(folder, list(labelers), cfg.label.overlap)
    print(f"serving {progress.items} items ({progress.answered} of {progress.assigned} assignments answered) "
          f"of {folder} on {base}", flush=True)
    if list(labelers) == [LOCAL_LABELER]:
        print(f"open {base}?token={labelers[LOCAL_LABELER]}", flush=True)
    else:
        print(f"each labeler opens {base}?token=<their token from {cfg.label.labelers}>", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if mirror is not None:
            mirror.close()
        lock.close()
    return 0


def find_batch(paths: RunPaths, cfg, round_: int | None, out: Path | None) -> Path:
    """The labeling folder to serve: `--out`'s, `--round`'s, or the latest round's that has a batch."""
    if out is not None:
        candidates = [store.labeling_dir(out)]
    elif round_ is not None:
        candidates = [store.labeling_dir(paths.round(round_).comparisons)]
    else:
        rounds_dir = paths.root / "rounds"
        rounds = sorted((int(p.name) for p in rounds_dir.iterdir() if p.name.isdigit()), reverse=True) \
            if rounds_dir.is_dir() else []
        candidates = [store.labeling_dir(paths.round(r).comparisons) for r in [*rounds, 0]]
    for folder in candidates:
        if (folder / store.BATCH_FILE).is_file():
            return folder
    looked = ", ".join(str(folder / store.BATCH_FILE) for folder in candidates)
    raise ConfigError(f"no batch to label (looked for {looked}); sample one with: raylhf collect "
                      f"collect.labeler=human output_dir={cfg.output_dir} name={cfg.name}")


def load_labelers(path: str | None) -> dict[str, str] | None:
    """The labelers file (YAML or JSON: labeler id -> token), or None when `label.labelers` is unset."""
    if path is None:
        return None
    file = Path(path).expanduser()
    try:
        mapping = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"label.labelers: cannot read {file}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"label.labelers: {file} is not YAML/JSON: {_first_line(e)}") from e
    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError(f"label.labelers: {file} must map labeler id -> token")
    labelers: dict[str, str] = {}
    for labeler, token in mapping.items():
        labeler = str(labeler)
        if not LABELER_ID.fullmatch(labeler):
            raise ConfigError(f"label.labelers: {file}: labeler id {labeler!r} must be 1-64 of A-Z a-z 0-9 _ . @ -")
        if not (isinstance(token, str) and TOKEN.fullmatch(token)):
            raise ConfigError(f"label.labelers: {file}: labeler {labeler!r}: the token must be at least "
                              f"{MIN_TOKEN_CHARS} characters of A-Z a-z 0-9 . _ ~ - (it goes in a URL and a cookie; "
                              f"e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
        if token in labelers.values():
            raise ConfigError(f"label.labelers: {file}: labeler {labeler!r} has another labeler's token")
        labelers[labeler] = token
    return labelers


def _serve_alone(folder: Path):
    """Lock the labeling folder for this server (released when the process ends, killed or not)."""
    handle = open(folder / LOCK_FILE, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.close()
        raise ConfigError(f"another raylhf label is serving {folder} (it holds {folder / LOCK_FILE}); "
                          f"stop it first") from e
    return handle


def _local_token(folder: Path) -> str:
    """The `local` labeler's token, kept in the labeling folder (owner-only) so a restarted server keeps the
    page signed in."""
    path = folder / LOCAL_TOKEN_FILE
    if path.is_file():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
