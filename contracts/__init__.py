"""The leaf package every component shares; it imports nothing else of raylhf.

- `records`: typed records with pyarrow schemas (prompts, demonstrations, comparisons, rollouts, documents);
  `dataio`: their JSONL/Parquet readers and writers with per-row errors.
- `snapshot`: `WeightSnapshot`, the weights that travel from the learner to the generators.
- `protocols`: the seams — `GenerationEngine`, `Scorer`, `Labeler`, `Task`, and the driver's
  `GeneratorService`, `LearnerService`, `ScoringPool`.
- `remote`: every wait on a Ray actor, with a deadline, and `ActorFailure` naming the actor and cause.
- `formatting`: how prompts and responses become token ids.
"""
