"""Optimisation: the loss functions, the stage trainers and the PPO learner.

`losses` (pure functions over tensors), `pretrain`, `sft` and `reward_model` (the stage trainers
`pretrain`, `train_sft`, `train_reward_model`), `ppo` (`PPOLearner`), `rollout_batch` (PPO batches),
`ppo_actor` (`PPOLearnerActor`, the Ray actor), with `models`, `batching` and `training` shared by them.
"""
