"""The shortened pipeline the end-to-end tests run through the CLI, and how they call it."""

import os
import subprocess
import sys

# Every stage of the default pipeline, made small enough for a test: a few hundred prompts, 30 PPO steps.
SMALL = [
    "task.n_train_prompts=300", "task.n_heldout_prompts=40", "task.n_generalization_prompts=40",
    "task.n_pretrain_docs=2000",
    "pretrain.steps=80", "pretrain.batch_size=16", "pretrain.seq_len=64", "pretrain.warmup_steps=10",
    "sft.epochs=2", "collect.n_prompts=150", "collect.k=4", "collect.temperatures=[1.0]",
    "ppo.total_steps=30", "ppo.batch_size=32", "ppo.minibatch_size=16", "ppo.prompts_per_request=16",
    "ppo.lr=1e-3", "ppo.kl_coef=0.02", "ppo.eval_every=15", "ppo.eval_prompts=16", "ppo.max_staleness=2", "ppo.buffer_size=64",
    "eval.n_prompts=24", "eval.rm_eval_prompts=24", "torch_threads=1", "iterate.rounds=0",
]


def raylhf(args, cwd, env=None, timeout=1200):
    """`python -m raylhf <args>` in `cwd`; asserts it succeeded (showing its output if not)."""
    env = dict(os.environ if env is None else env, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    out = subprocess.run([sys.executable, "-m", "raylhf", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out
