"""GenerationEngine on vLLM, running in the calling process (inside a GeneratorActor, or a test).

Behaviour logprobs come from vLLM's `logprobs_mode="processed_logprobs"`: the log-softmax of the
logits after temperature scaling and top-p filtering, i.e. of the distribution each token was
sampled from (vLLM's default reports the raw model distribution instead). With temperature 0
(greedy) there is no scaling and the logprob is that of the unscaled model distribution.

Weight updates. `generate` drives vLLM's engine step by step (as `LLM.wait_for_completion` does) so
that a snapshot handed over by another thread while a call runs (`load_weights`, in-flight mode) is
applied between two engine steps: generation goes on with the new weights at the next token. Tokens
sampled after the update attend to keys and values the old weights wrote into the KV cache (the
PipelineRL trade-off: no recomputation, a bounded mismatch); each token's logprob is still that of the
distribution that sampled it. The prefix cache is reset once no request holds blocks, at the end of
the call, so no later call reuses a prefix computed with old weights.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Sequence

import torch

from raylhf.actors.checkpoint import checkpoint_signature, eos_token_ids
from raylhf.actors.sampling import finish_reason, request_problem, request_seed
from raylhf.contracts.hf_checkpoint import require_checkpoint
from raylhf.contracts.protocols import GenerationRequest, RequestError, SamplingSpec
from raylhf.contracts.records import Rollout
from raylhf.contracts.snapshot import WeightSnapshot, check_signature

WORKER_EXTENSION = "raylhf.actors.worker_extension.WeightSyncExtension"

log = logging.getLogger(__name__)


@dataclass
class _Handoff:
    """A snapshot handed from the weights thread to the running generate call."""

    snapshot: WeightSnapshot
    done: bool = False
    error: BaseException | None = None


class VLLMEngine:
    """One vLLM engine (one worker) serving token-id prompts, with in-place weight updates.

    `load_weights` may be called from a second thread while `generate` runs: the snapshot is then applied
    by the generate thread at its next step boundary and `load_weights` returns once it is (the engine is
    only ever touched by one thread at a time). Any other two calls must not overlap (a GeneratorActor
    serialises them). `version` is the version of the weights in the engine; every rollout carries the
    version its call began with, and with `weight_updates="in_flight"` also the version in force when it
    finished (`Rollout.last_version`).

    `max_model_len` is the longest prompt + response the engine accepts; None takes the model config's
    context, capped at what one sequence can hold of `kv_cache_bytes`. `context_len` is what it became.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        dtype: str = "float32",
        kv_cache_bytes: int = 256 * 1024 * 1024,
        enforce_eager: bool = True,
        seed: int = 0,
        max_model_len: int | None = None,
        num_threads: int | None = None,
        trust_remote_code: bool = False,
        version: int = 0,
        warmup: bool = True,
        weight_updates: str = "between_calls",
    ):
        # In-process engine: snapshots reach the worker by reference (no pickling) and the engine
        # starts in seconds instead of tens of seconds.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if num_threads is not None:
            # Before vLLM starts: its CPU worker turns torch.set_num_threads into a no-op.
            torch.set_num_threads(num_threads)
        from vllm import LLM

        self.checkpoint = str(require_checkpoint(checkpoint))  # a local directory: vLLM would try the Hub
        self.dtype = dtype
        t0 = time.perf_counter()
        set_num_threads = torch.set_num_threads
        self._llm = LLM(
            model=self.checkpoint,
            dtype=dtype,
            enforce_eager=enforce_eager,
            kv_cache_memory_bytes=kv_cache_bytes,
            # Unset, vLLM would take the config's context and refuse to start when one sequence of it does not
            # fit in the KV cache (a 32k-context model in 256 MB); -1 caps it at what fits (vLLM's auto-fit).
            max_model_len=-1 if max_model_len is None else max_model_len,
            seed=seed,
            trust_remote_code=trust_remote_code,
            skip_tokenizer_init=True,  # prompts and responses are token ids
            generation_config="vllm",  # sampling comes from SamplingSpec only, never the checkpoint's defaults
            logprobs_mode="processed_logprobs",
            worker_extension_cls=WORKER_EXTENSION,
        )
        # vLLM's CPU worker replaces torch.set_num_threads process-wide with a no-op because its
        # multiprocess mode pins OpenMP threads to cores; in-process nothing is pinned, so the rest
        # of the process gets the real function back.
        torch.set_num_threads = set_num_threads
        # Checked, not assumed: with batches queued in vLLM's engine core (its batch queue) a step boundary
        # is not a point where no forward pass uses the weights; an update then waits for an empty queue.
        core = getattr(self._llm.llm_engine.engine_core, "engine_core", None)
        self._batch_queue = getattr(core, "batch_queue", None)
        model_config = self._llm.llm_engine.model_config
        self.context_len: int = model_config.max_model_len
        self.vocab_size: int = model_config.get_vocab_size()
        self.eos_ids: tuple[int, ...] = eos_token_ids(self.checkpoint)
        self.signature = checkpoint_signature(self.checkpoint, dtype, trust_remote_code)
        self._version = version
        self.record_spans = weight_updates == "in_flight"  # fill Rollout.last_version
        # Hand-off between a weights thread and the generate thread: `_generating` says whether a call
        # owns the engine, `_pending` holds the snapshot it is to apply at its next step boundary.
        self._cond = threading.Condition()
        self._generating = False
        self._pending: _Handoff | None = None
        self._prefix_stale = False  # the prefix cache may hold blocks computed with replaced weights
        self.stats = {"generate_calls": 0, "generated_tokens": 0, "generate_s": 0.0, "syncs": 0, "sync_s": 0.0,
                      "in_flight_syncs": 0}
        if warmup:
            # The first forward passes create the CPU kernels (seconds); pay that at start-up.
            self.generate([GenerationRequest("warmup", (self.eos_ids[0] if self.eos_ids else 0,) * 4)],
                          SamplingSpec(n=2, temperature=1.0, max_new_tokens=4, seed=0))
            self.stats.update(generate_calls=0, generated_tokens=0, generate_s=0.0)
        self.start_s = time.perf_counter() - t0

    @property
    def version(self) -> int:
        return self._version

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSpec
    ) -> list[list[Rollout] | RequestError]:
        with self._cond:
            if self._generating:
                raise RuntimeError("VLLMEngine.generate called while another generate call runs")
            self._generating = True  # from here on a snapshot is handed to this call, not applied directly
        try:
            return self._generate(requests, sampling)
        finally:
            with self._cond:
                self._apply_pending(in_flight=False)  # one that arrived after the last step: the call is over
                self._generating = False
                self._cond.notify_all()

    def _generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSpec
    ) -> list[list[Rollout] | RequestError]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        t0 = time.perf_counter()
        start_version = self._version
        if self._prefix_stale:
            self._reset_prefix_cache()
        results: list[list[Rollout] | RequestError | None] = [None] * len(requests)
        valid: list[tuple[int, SamplingSpec, object, object]] = []  # (index, spec, prompt, params)
        for i, req in enumerate(requests):
            spec = req.sampling or sampling
            problem = request_problem(req, spec, self.context_len, self.vocab_size)
            if problem is not None:
                results[i] = RequestError(req.prompt_id, problem)
                continue
            try:
                params = SamplingParams(
                    n=spec.n,
                    temperature=float(spec.temperature),
                    top_p=float(spec.top_p),
                    max_tokens=spec.max_new_tokens,
                    stop_token_ids=[*self.eos_ids, *spec.stop_token_ids],
                    seed=None if spec.seed is None else request_seed(spec.seed, req.prompt_id),
                    logprobs=0,  # the sampled token's logprob only
                    detokenize=False,
                )
            except ValueError as e:  # vLLM's own checks, past ours
                results[i] = RequestError(req.prompt_id, f"refused by vLLM: {e}")
                continue
            valid.append((i, spec, TokensPrompt(prompt_token_ids=list(req.prompt_ids)), params))

        pending: list[tuple[str, int, SamplingSpec]] = []  # (vLLM request id, index, spec), in enqueue order
        try:  # one call for the batch; vLLM withdraws it whole if any request fails its checks
            ids = self._llm.enqueue([v[2] for v in valid], [v[3] for v in valid], use_tqdm=False) if valid else []
            pending = [(rid, i, spec) for rid, (i, spec, _, _) in zip(ids, valid)]
        except (ValueError, TypeError):  # find the refused requests one by one; serve the rest
            for i, spec, prompt, params in valid:
                try:
                    [rid] = self._llm.enqueue(prompt, params, use_tqdm=False)
                except (ValueError, TypeError) as e:
                    results[i] = RequestError(requests[i].prompt_id, f"refused by vLLM: {e}")
                    continue
                pending.append((rid, i, spec))

        # Outputs come back sorted by request id, i.e. in enqueue order; vLLM reports the id it was
        # given while `enqueue` returns that id with a uniqueness suffix appended.
        try:
            outputs, finished_under = self._run_to_completion() if pending else ([], {})
        except BaseException:
            # leave no half-finished requests behind to be returned by the next call
            self._llm.llm_engine.abort_request([rid for rid, _, _ in pending], internal=True)
            raise
        finally:
            if self._prefix_stale:  # every request has finished or was aborted: no block is held now
                self._reset_prefix_cache()
        if len(outputs) != len(pending):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(pending)} requests")
        now = time.time()
        n_tokens = 0
        for out, (request_id, i, spec) in zip(outputs, pending):
            if request_id != out.request_id and not request_id.startswith(out.request_id + "-"):
                raise RuntimeError(f"vLLM output {out.request_id!r} does not belong to request {request_id!r}")
            req = requests[i]
            rollouts = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM request {req.prompt_id!r} ended with {c.finish_reason!r}")
                ids = list(c.token_ids)
                logprobs = [step[tok].logprob for tok, step in zip(ids, c.logprobs)]
                n_tokens += len(ids)
                rollouts.append(
                    Rollout(
                        prompt_id=req.prompt_id,
                        prompt_ids=list(req.prompt_ids),
                        response_ids=ids,
                        logprobs=logprobs,
                        policy_version=start_version,
                        finish_reason=finish_reason(ids, self.eos_ids, spec.stop_token_ids),
                        t_generated=now,
                        sample_id=uuid.uuid4().hex,
                        last_version=finished_under[out.request_id] if self.record_spans else None,
                    )
                )
            results[i] = rollouts
        self.stats["generate_calls"] += 1
        self.stats["generated_tokens"] += n_tokens
        self.stats["generate_s"] += time.perf_counter() - t0
        return results  # type: ignore[return-value]

    def _run_to_completion(self) -> tuple[list, dict[str, int]]:
        """`LLM.wait_for_completion` (vLLM 0.32's `_run_engine` without the progress bar), applying a handed-over
        snapshot between engine steps. Returns the finished outputs sorted by request id, as vLLM does, and the
        version in force at the step each request finished in."""
        from vllm import RequestOutput

        engine = self._llm.llm_engine
        outputs: list[RequestOutput] = []
        finished_under: dict[str, int] = {}
        while engine.has_unfinished_requests():
            if self._pending is not None and not self._batch_queue:
                with self._cond:
                    self._apply_pending(in_flight=True)
            for output in engine.step():
                assert isinstance(output, RequestOutput)
                if output.finished:
                    outputs.append(output)
                    finished_under[output.request_id] = self._version
        return sorted(outputs, key=lambda x: int(x.request_id)), finished_under

    def load_weights(self, snapshot: WeightSnapshot) -> None:
        """Apply a snapshot; a mismatched one is refused (SnapshotMismatchError) before anything is changed.

        Called while `generate` runs in another thread, the snapshot is handed to that call, which applies it
        at its next step boundary; this returns once it is applied (or re-raises what applying it raised,
        while the generate call goes on with the weights it had).
        """
        check_signature(snapshot, self.signature, f"the engine's model ({self.checkpoint}, {self.dtype})")
        with self._cond:
            while self._pending is not None:  # one hand-off at a time
                self._cond.wait()
            if not self._generating:
                self._apply(snapshot)
                return
            handoff = self._pending = _Handoff(snapshot)
            while not handoff.done:
                self._cond.wait()
        if handoff.error is not None:
            raise handoff.error

    def _apply_pending(self, in_flight: bool) -> None:
        """Apply the handed-over snapshot, if any, and wake its caller. Holds `_cond`."""
        handoff, self._pending = self._pending, None
        if handoff is None:
            return
        try:
            self._apply(handoff.snapshot, in_flight=in_flight)
        except BaseException as e:  # the caller of load_weights gets it; this generate call goes on
            handoff.error = e
        handoff.done = True
        self._cond.notify_all()

    def _apply(self, snapshot: WeightSnapshot, in_flight: bool = False) -> None:
        t0 = time.perf_counter()
        self._llm.collective_rpc("apply_snapshot", args=(snapshot,))
        self._version = snapshot.version
        # A cached prompt prefix holds keys and values computed with the old weights: never reuse it. Blocks
        # of running requests cannot be dropped, so mid-call the reset waits for the end of the call.
        self._prefix_stale = True
        if not in_flight:
            self._reset_prefix_cache()
        self.stats["syncs"] += 1
        self.stats["in_flight_syncs"] += int(in_flight)
        self.stats["sync_s"] += time.perf_counter() - t0

    def _reset_prefix_cache(self) -> None:
        # vLLM refuses (returns False) while a request holds blocks; then the next call tries again.
        self._prefix_stale = not self._llm.reset_prefix_cache()
        if self._prefix_stale:
            log.warning("prefix cache not reset (blocks still held); retrying at the next generate call")

    def checksums(self) -> dict[str, str]:
        """Per-tensor checksums of the weights the engine computes with, read back through the worker.

        HF names; includes `lm_head.weight` (the logits matrix) also for tied embeddings.
        """
        with self._cond:  # not while a weights thread applies a snapshot
            return self._llm.collective_rpc("weight_checksums")[0]

    def read_back(self) -> dict[str, torch.Tensor]:
        """The weights the engine computes with, under HF names (see actors/worker_extension.py)."""
        with self._cond:
            return self._llm.collective_rpc("read_back")[0]

    def close(self) -> None:
        """Release the engine (its KV cache and weights)."""
        llm = getattr(self, "_llm", None)
        if llm is not None:
            self._llm = None
            del llm
            gc.collect()
