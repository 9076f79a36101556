"""The controller: builds the actors from the config, runs the loop, owns checkpoints, metrics and the CLI.

Start reading at `driver.PPODriver.run` (the one loop), then `ppo_stage.run_ppo` (what is built around it),
then `pipeline.run_pipeline` (every stage of `raylhf run`, round after round).

The PPO stage:
- `driver`: `PPODriver` (async and sync loops), `InFlight` (what is in flight between its hops);
  `run_stats`: `RunStats`, `LoopState`, `StepObserver`.
- `generator_set.GeneratorSet`: the generators as supervised slots with coalesced weight loads (the learner's
  slot is in the driver, the scorers' in `raylhf.reward_service.pool`; all three use
  `raylhf.contracts.supervision.Supervised`).
- `actor_set.PPOActors`: the stage's actors, started together, replaced on request and always stopped.
- `ppo_stage`: `run_ppo`, `StepReporter`, `InTrainingEval`; `ppo_checkpoint.PPOCheckpoint`: save / latest /
  resumable / restore; `cursor.PromptCursor`: the position in the prompt set; `ledger.SampleLedger`: where
  every rollout went; `preflight`: inputs checked before anything starts.

The pipeline's other stages:
- `stages`: data, pretrain, SFT and RM stages; `collect_stage`: the one collect stage of every round (sample
  step, then rank step); `human_rankings`: its rank step when people rank (`collect.labeler: human`, the
  batch served by `raylhf.labeling`); `eval_stages`: RM evaluation and policy evaluation; `rounds`: iterated
  RLHF bookkeeping.
- `fleet.GeneratorFleet`: generators behind one blocking call; `sample_and_rank`: sampling policies through a
  fleet and ranking the samples into comparisons; `evaluation`: pairwise metrics and win rates.

The surface:
- `cli`: the `raylhf` command; `report.write_report`; `metrics_exporter`: live Prometheus metrics;
  `paths.RunPaths`: the run directory's layout; `storage`: runs kept at a storage URI;
  `ray_runtime.init_ray`.
"""
