"""`GeneratorActor`: one generation engine in a Ray actor; `spawn_generator`, `start_generators`, `broadcast_weights`.

Weights travel through the object store: the learner `ray.put`s one WeightSnapshot per version
and hands the same ObjectRef to every generator (`broadcast_weights`). Passed as a top-level
argument, Ray resolves the ref before `load_weights` runs and the snapshot's numpy buffers are
mapped zero-copy from shared memory; the actor keeps no reference once the call returns, so an
old version is freed as soon as its publisher drops its ref.

Two actor classes serve the two `generation.weight_updates` modes with the same methods:

- `GeneratorActor` (`between_calls`): a synchronous actor (Ray's default max_concurrency=1) that runs one
  method at a time in submission order, so `load_weights` never interleaves with `generate` and every
  rollout of a call comes from the one version it reports.
- `GeneratorActorInFlight` (`in_flight`): the same, plus a concurrency group `weights` of one thread.
  `load_weights` called in that group (`load_weights_call`) runs while a `generate` call runs in the
  default group and hands the snapshot to it; the engine applies it between two decoding steps and
  the load returns once it is applied. Every other method stays in the default group, one at a time
  in submission order. Ray takes concurrency groups from the class only (`.options()` refuses them).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Sequence

import ray

from raylhf.actors.engines import create_engine, threads_for
from raylhf.configs.schema import GenerationConfig
from raylhf.contracts import remote
from raylhf.contracts.affinity import current_cpus, pin_process
from raylhf.contracts.model_files import ModelFiles
from raylhf.contracts.protocols import ActorInfo, GenerationRequest, RequestError, SamplingSpec
from raylhf.contracts.records import Rollout
from raylhf.contracts.remote import NamedActor
from raylhf.contracts.snapshot import WeightSnapshot

WEIGHTS_GROUP = "weights"  # concurrency group of in-flight weight loads


class _Generator:
    """The methods both generator actor classes serve (see the module docstring)."""

    def __init__(
        self,
        cfg: GenerationConfig,
        checkpoint: str | ModelFiles,
        seed: int = 0,
        trust_remote_code: bool = False,
        version: int = 0,
        name: str = "generator",
    ):
        from raylhf.contracts.model_files import local_dir  # on another node: the files, unpacked here

        pin_process(cfg.cpus, "generation.cpus")  # before the engine starts its threads
        self.name = name
        self._engine = create_engine(
            cfg, local_dir(checkpoint), seed=seed, trust_remote_code=trust_remote_code, version=version
        )

    def ready(self) -> ActorInfo:
        e = self._engine
        return ActorInfo(self.name, os.getpid(), ray.get_runtime_context().get_node_id(), current_cpus(),
                         socket.gethostname(),
                         {"engine": type(e).__name__, "version": e.version, "start_s": e.start_s,
                          "context_len": e.context_len, "vocab_size": e.vocab_size})

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSpec
    ) -> list[list[Rollout] | RequestError]:
        return self._engine.generate(requests, sampling)

    def load_weights(self, snapshot: WeightSnapshot) -> int:
        """Apply a snapshot in place; returns the engine's version afterwards.

        Call it with the snapshot's ObjectRef as the argument itself (`load_weights.remote(ref)`),
        not inside a container: Ray then resolves it before the call, zero-copy. A snapshot that
        does not match the model raises SnapshotMismatchError; the engine keeps its weights and version.
        """
        self._engine.load_weights(snapshot)
        return self._engine.version

    def version(self) -> int:
        return self._engine.version

    def checksums(self) -> dict[str, str]:
        """Per-tensor checksums of the weights inside the engine (HF names), read back from it."""
        return self._engine.checksums()

    def stats(self) -> dict[str, float]:
        return dict(self._engine.stats, version=self._engine.version)


# Ray runs one method of this actor at a time (a synchronous actor with the default
# max_concurrency=1), so load_weights can never interleave with generate: every rollout of a
# generate call comes from one version of the weights, the version it reports. Keep it that way:
# no async methods, no threaded concurrency.
@ray.remote(max_concurrency=1)
class GeneratorActor(_Generator):
    pass


# The default group as above (generate, ready, checksums, ... one at a time, in order); `load_weights`
# called in WEIGHTS_GROUP runs beside a generate call, which applies the snapshot at its next step.
@ray.remote(max_concurrency=1, concurrency_groups={WEIGHTS_GROUP: 1})
class GeneratorActorInFlight(_Generator):
    pass


def load_weights_call(handle: Any, snapshot_ref: Any, in_flight: bool) -> "ray.ObjectRef":
    """Submit `load_weights(snapshot_ref)`: in the weights group of an in-flight generator (it runs while a
    generate call runs), else queued behind the calls submitted before it."""
    method = handle.load_weights.options(concurrency_group=WEIGHTS_GROUP) if in_flight else handle.load_weights
    return method.remote(snapshot_ref)


def generator_options(cfg: GenerationConfig, name: str | None = None) -> dict[str, Any]:
    """Ray actor options of one generator: its resources and an in-process vLLM."""
    threads = threads_for(cfg.num_cpus)
    options: dict[str, Any] = {
        "num_cpus": cfg.num_cpus,
        "num_gpus": cfg.num_gpus,
        "resources": dict(cfg.resources),
        "runtime_env": {
            "env_vars": {
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine inside the actor process
                "OMP_NUM_THREADS": str(threads),
                "TOKENIZERS_PARALLELISM": "false",
                "VLLM_LOGGING_LEVEL": cfg.log_level,
            }
        },
    }
    if cfg.engine == "vllm" and cfg.num_gpus == 0:
        options["memory"] = cfg.kv_cache_bytes  # the KV cache lives in host memory
    if name is not None:
        options["name"] = name
    return options


def spawn_generator(cfg: GenerationConfig, checkpoint: str | os.PathLike | ModelFiles, *, index: int, seed: int = 0,
                    trust_remote_code: bool = False, version: int = 0, name_prefix: str = "generator") -> NamedActor:
    """Create generator `index` (named `<name_prefix>-<index>`, engine seed `seed + index`) without waiting
    for it: calls made on it run once its engine has loaded."""
    name = f"{name_prefix}-{index}"
    actor_class = GeneratorActorInFlight if cfg.weight_updates == "in_flight" else GeneratorActor
    handle = actor_class.options(**generator_options(cfg)).remote(
        cfg, checkpoint if isinstance(checkpoint, ModelFiles) else str(checkpoint), seed + index, trust_remote_code, version, name)
    return NamedActor(name, handle)


def start_generators(
    cfg: GenerationConfig,
    checkpoint: str | os.PathLike | ModelFiles,
    *,
    seed: int = 0,
    trust_remote_code: bool = False,
    version: int = 0,
    name_prefix: str = "generator",
    ready_timeout_s: float = 600.0,
) -> list[NamedActor]:
    """Start `cfg.num_generators` GeneratorActors on `checkpoint` and wait until all can generate.

    Generator i is named `<name_prefix>-i` and samples with engine seed `seed + i`. Raises `ActorFailure`
    (after killing the started actors) if one fails to start or does not come up within `ready_timeout_s`.
    """
    actors = [spawn_generator(cfg, checkpoint, index=i, seed=seed, trust_remote_code=trust_remote_code,
                              version=version, name_prefix=name_prefix) for i in range(cfg.num_generators)]
    try:
        remote.get_all([a.handle.ready.remote() for a in actors], [a.name for a in actors], "start", ready_timeout_s)
    except BaseException:
        for a in actors:
            ray.kill(a.handle)
        raise
    return actors


def broadcast_weights(
    generators: Sequence[NamedActor], snapshot: "ray.ObjectRef | WeightSnapshot", in_flight: bool = False
) -> list[ray.ObjectRef]:
    """Ask every generator to apply one snapshot; returns the refs of the calls (each: new version).

    Pass the ObjectRef of a snapshot `ray.put` once: every generator maps the same object. A
    WeightSnapshot passed directly is put once here. The calls queue behind each generator's
    running generate call and run before any generate submitted after them; with `in_flight`
    (generators started with `weight_updates: in_flight`) each is applied inside the running call instead.
    """
    ref = snapshot if isinstance(snapshot, ray.ObjectRef) else ray.put(snapshot)
    return [load_weights_call(g.handle, ref, in_flight) for g in generators]
