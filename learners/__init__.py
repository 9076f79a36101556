"""Optimisation: the loss functions, the stage trainers and the PPO learner.

`losses` (pure functions over tensors), `pretrain`, `sft` and `reward_model` (the stage trainers
`pretrain`, `train_sft`, `train_reward_model`; `reward_model` is also the one reward-model scoring path,
which the reward service uses), `ppo` (`PPOLearner`), `policy_value` (its two networks and their
minibatch step), `rollout_batch` (PPO batches), `ppo_actor` (`PPOLearnerActor`, the Ray actor), with
`models`, `batching` and `training` shared by them.
"""
