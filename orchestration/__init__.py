"""The controller: builds the actors from the config, runs the loop, owns checkpoints, metrics and the CLI.

Start reading at `driver.PPODriver.run` (the one loop), then `ppo_stage.run_ppo` (what is built around it).

- `cli`: the `raylhf` command; `pipeline.run_pipeline`: `raylhf run`, stage after stage.
- `stages`: data, pretrain, SFT, collect, RM, RM eval and eval stages, one function each.
- `ppo_stage`: `run_ppo`, `StepReporter`, `InTrainingEval`; `actor_set.PPOActors`: the PPO stage's actors,
  started together and always stopped; `ppo_checkpoint.PPOCheckpoint`: save / latest / resumable / restore.
- `driver`: `PPODriver` (async and sync loops), `Pipeline` (what is in flight), `RunStats`, `PhaseTimer`.
- `cursor.PromptCursor`: the position in the prompt set; `fleet.GeneratorFleet`: generators behind one
  blocking call (collection, evaluation); `sampling`, `evaluation`: sampling for stages, pairwise metrics.
- `paths.RunPaths`: the run directory's layout; `ray_runtime.init_ray`; `report.write_report`.
"""
