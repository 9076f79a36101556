"""Where a run's files are kept: a local or shared path, or a `pyarrow.fs` URI mirrored from a local copy.

`output_dir` is resolved once, when a command starts (`RunStorage.resolve`):

- a path (`runs`, `/shared/runs`) or a `file://` URI: the run lives there, and every stage reads and
  writes it directly;
- any other URI `pyarrow.fs` opens (`s3://bucket/runs`, `gs://...`, `hdfs://...`, with its query options
  such as `?endpoint_override=host:port&scheme=http`): the driver works in a local copy
  (`staging_dir`, default `~/.cache/raylhf/staging`), which `pull()` fills from the URI when a command
  starts (so a job on a fresh head node resumes a run), and `push()` mirrors to the URI after every stage,
  after every PPO checkpoint and when the command ends, failed or not.

Actors never touch this storage: the driver sends them what they need through Ray's object store
(`raylhf.contracts.model_files`), so remote nodes need neither the path nor the URI's credentials.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_STAGING = "~/.cache/raylhf/staging"


def is_remote_uri(output_dir: str) -> bool:
    """A URI with a scheme other than `file` (`s3://...`); a Windows drive letter is not a scheme."""
    scheme, sep, _ = output_dir.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme != "file"


def local_output_dir(output_dir: str) -> Path:
    """`output_dir` as a local path: `file:///abs` -> `/abs`, `~` expanded."""
    if output_dir.startswith("file://"):
        return Path(output_dir[len("file://"):]).expanduser()
    return Path(output_dir).expanduser()


@dataclass
class RunStorage:
    """A run directory: `root` is where this process reads and writes it; `uri`, when set, is its home,
    mirrored from `root`."""

    root: Path
    uri: str | None = None
    _fs: Any = None
    _base: str = ""
    _pushed: dict[str, tuple[int, int]] = field(default_factory=dict)  # rel path -> (size, mtime_ns) last mirrored

    @classmethod
    def resolve(cls, output_dir: str, name: str, staging_dir: str | None = None) -> "RunStorage":
        """The storage of run `name` under `output_dir`; a bad URI raises `ConfigError` naming the key."""
        if not is_remote_uri(output_dir):
            return cls(local_output_dir(output_dir) / name)
        import pyarrow.fs as pafs

        from raylhf.configs.loader import ConfigError

        try:
            fs, base = pafs.FileSystem.from_uri(output_dir)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError / ValueError by scheme
            raise ConfigError(f"output_dir: {output_dir!r} is not a storage URI pyarrow can open: {e}") from e
        uri = f"{output_dir.split('?', 1)[0].rstrip('/')}/{name}"
        key = hashlib.sha256(output_dir.encode()).hexdigest()[:12]
        root = Path(staging_dir or DEFAULT_STAGING).expanduser() / key / name
        return cls(root, uri, fs, f"{base.rstrip('/')}/{name}")

    def __str__(self) -> str:
        return self.uri or str(self.root)

    # -- mirroring ---------------------------------------------------------------------------------------
    def _local_files(self) -> dict[str, tuple[int, int]]:
        if not self.root.exists():
            return {}
        out = {}
        for path in self.root.rglob("*"):
            if path.is_file():
                st = path.stat()
                out[path.relative_to(self.root).as_posix()] = (st.st_size, st.st_mtime_ns)
        return out

    def _remote_files(self) -> dict[str, int]:
        import pyarrow.fs as pafs

        infos = self._fs.get_file_info(pafs.FileSelector(self._base, recursive=True, allow_not_found=True))
        return {info.path[len(self._base) + 1:]: info.size for info in infos if info.type == pafs.FileType.File}

    def pull(self) -> int:
        """Fetch the files the URI holds and the local copy lacks (or holds at another size); returns how many."""
        if self.uri is None:
            return 0
        local = self._local_files()
        fetched = 0
        for rel, size in sorted(self._remote_files().items()):
            if local.get(rel, (None,))[0] == size:
                continue
            target = self.root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._fs.open_input_stream(f"{self._base}/{rel}") as src:
                target.write_bytes(src.read())
            fetched += 1
        self._pushed = self._local_files()  # what is here now is what the URI holds
        if fetched:
            log.info("fetched %d files of %s into %s", fetched, self.uri, self.root)
        return fetched

    def push(self) -> int:
        """Mirror the local copy to the URI: upload new and changed files, delete the URI's files that are
        gone locally (a replaced checkpoint); returns how many files changed there."""
        if self.uri is None:
            return 0
        local = self._local_files()
        remote = self._remote_files()
        changed = 0
        for rel, (size, mtime) in sorted(local.items()):
            if self._pushed.get(rel) == (size, mtime) and remote.get(rel) == size:
                continue
            path = f"{self._base}/{rel}"
            self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with self._fs.open_output_stream(path) as out:
                out.write((self.root / rel).read_bytes())
            changed += 1
        for rel in sorted(set(remote) - set(local)):
            self._fs.delete_file(f"{self._base}/{rel}")
            changed += 1
        self._pushed = local
        return changed

