"""GenerationEngine on vLLM, running in the calling process (inside a GeneratorActor, or a test).

Behaviour logprobs come from vLLM's `logprobs_mode="processed_logprobs"`: the log-softmax of the
logits after temperature scaling and top-p filtering, i.e. of the distribution each token was
sampled from (vLLM's default reports the raw model distribution instead). With temperature 0
(greedy) there is no scaling and the logprob is that of the unscaled model distribution.
"""

from __future__ import annotations

import gc
import os
import time
import uuid
from typing import Sequence

import torch

from raylhf.actors.checkpoint import checkpoint_signature, eos_token_ids
from raylhf.actors.sampling import finish_reason, request_problem, request_seed
from raylhf.contracts.hf_checkpoint import require_checkpoint
from raylhf.contracts.protocols import GenerationRequest, RequestError, SamplingSpec
from raylhf.contracts.records import Rollout
from raylhf.contracts.snapshot import WeightSnapshot, check_signature

WORKER_EXTENSION = "raylhf.actors.worker_extension.WeightSyncExtension"


class VLLMEngine:
    """One vLLM engine (one worker) serving token-id prompts, with in-place weight updates.

    Not thread-safe: `generate` and `load_weights` must not run concurrently (a GeneratorActor
    serialises them). `version` is the version of the weights in the engine; every rollout
    carries the version that produced it.
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
            max_model_len=max_model_len,
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
        model_config = self._llm.llm_engine.model_config
        self.context_len: int = model_config.max_model_len
        self.vocab_size: int = model_config.get_vocab_size()
        self.eos_ids: tuple[int, ...] = eos_token_ids(self.checkpoint)
        self.signature = checkpoint_signature(self.checkpoint, dtype)
        self._version = version
        self.stats = {"generate_calls": 0, "generated_tokens": 0, "generate_s": 0.0, "syncs": 0, "sync_s": 0.0}
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
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        t0 = time.perf_counter()
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
            outputs = self._llm.wait_for_completion(use_tqdm=False) if pending else []
        except BaseException:
            # leave no half-finished requests behind to be returned by the next call
            self._llm.llm_engine.abort_request([rid for rid, _, _ in pending], internal=True)
            raise
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
                        policy_version=self._version,
                        finish_reason=finish_reason(ids, self.eos_ids, spec.stop_token_ids),
                        t_generated=now,
                        sample_id=uuid.uuid4().hex,
                    )
                )
            results[i] = rollouts
        self.stats["generate_calls"] += 1
        self.stats["generated_tokens"] += n_tokens
        self.stats["generate_s"] += time.perf_counter() - t0
        return results  # type: ignore[return-value]

    def load_weights(self, snapshot: WeightSnapshot) -> None:
        """Apply a snapshot in one call; a mismatched one is refused before anything is changed."""
        check_signature(snapshot, self.signature, f"the engine's model ({self.checkpoint}, {self.dtype})")
        t0 = time.perf_counter()
        self._llm.collective_rpc("apply_snapshot", args=(snapshot,))
        # A cached prompt prefix holds keys and values computed with the old weights: never reuse it.
        self._llm.reset_prefix_cache()
        self._version = snapshot.version
        self.stats["syncs"] += 1
        self.stats["sync_s"] += time.perf_counter() - t0

    def checksums(self) -> dict[str, str]:
        """Per-tensor checksums of the weights the engine computes with, read back through the worker.

        HF names; includes `lm_head.weight` (the logits matrix) also for tied embeddings.
        """
        return self._llm.collective_rpc("weight_checksums")[0]

    def read_back(self) -> dict[str, torch.Tensor]:
        """The weights the engine computes with, under HF names (see actors/worker_extension.py)."""
        return self._llm.collective_rpc("read_back")[0]

    def close(self) -> None:
        """Release the engine (its KV cache and weights)."""
        llm = getattr(self, "_llm", None)
        if llm is not None:
            self._llm = None
            del llm
            gc.collect()
