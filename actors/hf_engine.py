"""GenerationEngine on transformers `generate`: for machines without vLLM, and a benchmark baseline.

Behaviour logprobs are the log-softmax of the scores `generate` sampled from (after its
temperature and top-p warpers), i.e. of the distribution actually sampled from; top-k is switched
off so the distribution matches vLLM's. Greedy (temperature 0) reports the unscaled distribution.
Seeds: a call's requests with the same sampling spec are sampled as one batch from a generator
seeded once, so (unlike vLLM's per-request streams) results depend on how requests are batched.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Sequence

import torch

from raylhf.actors.checkpoint import eos_token_ids
from raylhf.actors.sampling import finish_reason, request_problem, request_seed
from raylhf.contracts.hf_checkpoint import require_checkpoint
from raylhf.contracts.protocols import GenerationRequest, RequestError, SamplingSpec
from raylhf.contracts.records import Rollout
from raylhf.contracts.snapshot import WeightSnapshot, check_signature, named_checkpoint_tensors, snapshot_tensors

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFEngine:
    """A transformers causal LM generating token-id prompts in left-padded batches.

    `max_model_len` is the longest prompt + response it accepts (None: the model config's context).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        seed: int = 0,
        max_model_len: int | None = None,
        max_batch_size: int = 256,
        num_threads: int | None = None,
        trust_remote_code: bool = False,
        version: int = 0,
    ):
        from transformers import AutoModelForCausalLM

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        t0 = time.perf_counter()
        self.checkpoint = str(require_checkpoint(checkpoint))
        self.dtype = dtype
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.checkpoint, dtype=_DTYPES[dtype], use_safetensors=True, trust_remote_code=trust_remote_code,
            local_files_only=True,
        ).to(self.device)
        self.model.eval()
        config = self.model.config
        self.context_len: int = config.max_position_embeddings
        if max_model_len is not None:  # as vLLM: a limit within the model's context, never past it
            if max_model_len > self.context_len:
                raise ValueError(f"max_model_len {max_model_len} exceeds the {self.context_len} positions of "
                                 f"{self.checkpoint}")
            self.context_len = max_model_len
        self.vocab_size: int = config.vocab_size
        self.eos_ids: tuple[int, ...] = eos_token_ids(self.checkpoint)
        self.pad_id: int = config.pad_token_id if config.pad_token_id is not None else (self.eos_ids or (0,))[0]
        self.signature = [(n, tuple(t.shape), str(t.dtype).removeprefix("torch."))
                          for n, t in named_checkpoint_tensors(self.model)]
        self._params = dict(named_checkpoint_tensors(self.model))
        self.seed = seed
        self.max_batch_size = max_batch_size
        self._version = version
        self.stats = {"generate_calls": 0, "generated_tokens": 0, "generate_s": 0.0, "syncs": 0, "sync_s": 0.0}
        self.start_s = time.perf_counter() - t0

    @property
    def version(self) -> int:
        return self._version

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSpec
    ) -> list[list[Rollout] | RequestError]:
        t0 = time.perf_counter()
        results: list[list[Rollout] | RequestError | None] = [None] * len(requests)
        groups: dict[SamplingSpec, list[int]] = {}
        for i, req in enumerate(requests):
            spec = req.sampling or sampling
            problem = request_problem(req, spec, self.context_len, self.vocab_size)
            if problem is not None:
                results[i] = RequestError(req.prompt_id, problem)
            else:
                groups.setdefault(spec, []).append(i)
        n_tokens = 0
        for spec, indices in groups.items():
            per_batch = max(1, self.max_batch_size // spec.n)
            for start in range(0, len(indices), per_batch):
                batch = indices[start : start + per_batch]
                for i, rollouts in zip(batch, self._generate_batch([requests[i] for i in batch], spec)):
                    results[i] = rollouts
                    n_tokens += sum(len(r.response_ids) for r in rollouts)
        self.stats["generate_calls"] += 1
        self.stats["generated_tokens"] += n_tokens
        self.stats["generate_s"] += time.perf_counter() - t0
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(self, requests: list[GenerationRequest], spec: SamplingSpec) -> list[list[Rollout]]:
        from transformers import GenerationConfig

        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, req in enumerate(requests):  # left padding: every prompt ends at the last column
            input_ids[row, width - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids)
            attention_mask[row, width - len(req.prompt_ids) :] = 1
        greedy = spec.temperature == 0
        stop_ids = [*self.eos_ids, *spec.stop_token_ids]
        config = GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else float(spec.temperature),
            top_p=None if greedy else float(spec.top_p),
            top_k=None if greedy else 0,  # transformers defaults to top-k 50; vLLM and the spec have none
            max_new_tokens=spec.max_new_tokens,
            min_new_tokens=0,
            num_return_sequences=spec.n,
            eos_token_id=stop_ids or None,
            pad_token_id=self.pad_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        if spec.seed is not None:
            torch.manual_seed(request_seed(spec.seed, requests[0].prompt_id))
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device), generation_config=config
        )
        generated = out.sequences[:, width:].cpu()  # [B*n, T]
        # scores: T x [B*n, V], the processed logits each token was drawn from
        logprobs = torch.stack(
            [torch.log_softmax(s.float(), -1).gather(-1, generated[:, t : t + 1].to(s.device)).squeeze(-1).cpu()
             for t, s in enumerate(out.scores)], dim=1,
        ) if out.scores else torch.zeros(generated.shape)
        now = time.time()
        results = []
        for row, req in enumerate(requests):
            rollouts = []
            for k in range(spec.n):
                seq = generated[row * spec.n + k].tolist()
                length = len(seq)
                for t, tok in enumerate(seq):  # the response ends at its first stop token
                    if tok in stop_ids:
                        length = t + 1
                        break
                ids = seq[:length]
                rollouts.append(
                    Rollout(
                        prompt_id=req.prompt_id,
                        prompt_ids=list(req.prompt_ids),
                        response_ids=ids,
                        logprobs=logprobs[row * spec.n + k, :length].tolist(),
                        policy_version=self._version,
                        finish_reason=finish_reason(ids, self.eos_ids, spec.stop_token_ids),
                        t_generated=now,
                        sample_id=uuid.uuid4().hex,
                    )
                )
            results.append(rollouts)
        return results

    def load_weights(self, snapshot: WeightSnapshot) -> None:
        """Copy a snapshot into the model's parameters; a mismatched one is refused before any copy."""
        check_signature(snapshot, self.signature, f"the engine's model ({self.checkpoint}, {self.dtype})")
        t0 = time.perf_counter()
        with torch.no_grad():
            for name, tensor in snapshot_tensors(snapshot):
                self._params[name].copy_(tensor)
        self._version = snapshot.version
        self.stats["syncs"] += 1
        self.stats["sync_s"] += time.perf_counter() - t0

    def read_back(self) -> dict[str, torch.Tensor]:
        """The model's tensors by HF name, plus `lm_head.weight` (the logits matrix) when tied."""
        out = {name: t.detach().cpu() for name, t in self._params.items()}
        head = self.model.get_output_embeddings()
        if head is not None and "lm_head.weight" not in out:
            out["lm_head.weight"] = head.weight.detach().cpu()
        return out

    def checksums(self) -> dict[str, str]:
        from raylhf.contracts.snapshot import tensor_checksum

        return {name: tensor_checksum(t) for name, t in self.read_back().items()}

    def close(self) -> None:
        self.model = None
        self._params = {}
