"""The leaf package every component shares; it imports nothing else of raylhf.

- `records`: typed records with pyarrow schemas (prompts, demonstrations, comparisons, rollouts, documents);
  `dataio`: their JSONL/Parquet readers and writers with per-row errors; `row_shapes`: the shapes your files
  may have (messages, chosen/rejected, renamed columns) read as those records.
- `snapshot`: `WeightSnapshot`, the weights that travel from the learner to the generators.
- `protocols`: the seams — `GenerationEngine`, `Scorer`, `Labeler`, `Task`, and the driver's
  `GeneratorService`, `LearnerService`, `ScoringPool` (with its `PoolStats`).
- `remote`: every wait on an actor, with a deadline, and `ActorFailure` naming the actor and cause;
  `local_actor.LocalActor`: an object served like an actor in this process (stand-ins without Ray).
- `supervision`: `Supervised`, the one primitive that keeps an actor alive (ordered calls, deadlines,
  replacement, back-off, restart cap) for generators, scorers and the learner; `Fault` / `FaultLog`.
- `timing.PhaseTimer`: wall seconds per labelled phase.
- `formatting`: how prompts and responses become token ids (`PromptFormat`: chat templates, BOS, end-of-turn).
- `hf_checkpoint`: what makes a directory a Hugging Face checkpoint (`require_checkpoint`);
  `model_files`: checkpoints shared with actors on other nodes; `affinity`: pinning a process to CPUs.
"""
