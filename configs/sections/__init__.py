"""The sections of the run config, one module per family; `raylhf.configs.schema` gathers them into `RunConfig`.

- `base`: `Section` (strict, frozen, a docstring per field) and `Placement`, the block every actor section
  shares (`num_cpus`, `num_gpus`, `resources`, `cpus`).
- `inputs`: `task`, `data`, `model`.
- `stages`: `pretrain`, `sft`, `rm`, `collect`, `eval`, `iterate`.
- `generation`, `ppo`, `reward`, `supervision`: the PPO stage's generators, learner, reward service, and how
  its actors are supervised.
- `runtime`: `ray`, `metrics`.
"""
