"""Generation: engines that sample rollouts with behaviour logprobs, and the Ray actor hosting one.

- `vllm_engine.VLLMEngine` / `hf_engine.HFEngine`: the `GenerationEngine` protocol in-process
  (vLLM, or transformers `generate` where vLLM is missing); `engines.create_engine` picks one from
  the config.
- `worker_extension.WeightSyncExtension`: applies a WeightSnapshot inside vLLM's worker and reads
  the engine's weights back for checks.
- `generator.GeneratorActor` (weights applied between generate calls) and `GeneratorActorInFlight`
  (applied inside a running call), `start_generators`, `broadcast_weights`: the generator pool on Ray
  and weight sync through the object store.
- `sampling`: request validation, per-request seeds, finish reasons, the config's SamplingSpec.

Only `generator` imports Ray and only `vllm_engine` (when constructed) and `worker_extension`
(inside vLLM) touch vLLM.
"""
