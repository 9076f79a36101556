"""Checkpoint directories that actors on any node can read: `share_dir` (driver) and `local_dir` (actor).

A run's files live on the driver's node. An actor placed on another node of a multi-node cluster cannot
open those paths unless every node mounts the same storage, and nothing guarantees that. So when the
cluster has more than one node, the driver packs each checkpoint directory an actor needs into one
object in Ray's object store (`share_dir`); an actor on another node unpacks it once into its node's
temporary directory (`local_dir`), and an actor on the driver's node reads the path itself. The learner's
checkpoints travel back the same way (`pack_dir` / `unpack_into`), so the run directory only ever has to
exist where the driver runs.

Only `share_dir` and `local_dir` import Ray, and only when called.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PackedDir = dict[str, bytes]  # relative path -> file contents


@dataclass(frozen=True)
class ModelFiles:
    """A checkpoint directory at `path` on node `node_id`; `packed` is the ObjectRef of its files (a
    `PackedDir`) when actors on other nodes may need them, else None."""

    path: str
    node_id: str
    packed: Any = None

    def __str__(self) -> str:  # error messages name the checkpoint as the user configured it
        return self.path


def pack_dir(root: str | os.PathLike) -> PackedDir:
    """Every file under `root`, by path relative to it."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unpack_into(files: PackedDir, root: str | os.PathLike) -> Path:
    """Write `files` under `root` (created); returns `root`."""
    root = Path(root)
    for rel, data in files.items():
        target = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ValueError(f"refusing to unpack {rel!r} outside {root}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def _alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def share_dir(path: str | os.PathLike | ModelFiles | None) -> ModelFiles | None:
    """`path` as `ModelFiles` for actors of this run: packed into the object store once when the cluster
    has more than one node (an actor elsewhere cannot open the driver's path), not packed otherwise.
    `ModelFiles` (already shared) and None are returned as they are."""
    import ray

    if path is None or isinstance(path, ModelFiles):
        return path
    if not ray.is_initialized():  # in-process stand-ins: one node, nothing to share
        return ModelFiles(str(path), None, None)
    packed = ray.put(pack_dir(path)) if _alive_nodes() > 1 else None
    return ModelFiles(str(path), ray.get_runtime_context().get_node_id(), packed)


def local_dir(model: str | os.PathLike | ModelFiles | None) -> str | None:
    """A path this process can read holding `model`'s files: the path itself on the driver's node (or
    when given a plain path), else the packed files unpacked once into this node's temporary directory."""
    import ray

    if model is None or not isinstance(model, ModelFiles):
        return None if model is None else str(model)
    if model.packed is None or ray.get_runtime_context().get_node_id() == model.node_id:
        return model.path
    key = hashlib.sha256(f"{model.node_id}:{model.path}:{model.packed.hex()}".encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / "raylhf-models" / key
    if not target.exists():  # several actors on one node: each unpacks aside, the first rename wins
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=target.parent))
        unpack_into(ray.get(model.packed), staging)
        try:
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)
