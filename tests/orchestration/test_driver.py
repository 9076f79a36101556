"""The PPO driver's loop with stand-in actors (the real ones are exercised in test_pipeline.py)."""

import json
import math
import time
from pathlib import Path

import pytest
import ray

from raylhf.configs.schema import PPOConfig
from raylhf.contracts.protocols import GeneratorService, LearnerService, RequestError, SamplingSpec, ScoringPool
from raylhf.contracts.records import Prompt, Rollout
from raylhf.contracts.remote import ActorFailure, NamedActor
from raylhf.orchestration.cursor import PromptCursor
from raylhf.orchestration.driver import PPODriver
from raylhf.orchestration.evaluation import pairwise_agreement


class _Tokenizer:
    bos_token_id = 1

    def encode(self, text, add_special_tokens=False):
        return [len(text) % 50 + 3]


class FakeGenerator:
    def __init__(self, fail_after=None, delay=0.01):
        self.version, self.calls, self.fail_after, self.delay = 0, 0, fail_after, delay

    def generate(self, requests, sampling):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("engine exploded")
        time.sleep(self.delay)
        out = []
        for r in requests:
            if r.prompt_id == "bad":
                out.append(RequestError(r.prompt_id, "empty prompt"))
            else:
                out.append([Rollout(r.prompt_id, list(r.prompt_ids), [5, 2], [-1.0, -0.5], self.version, "eos")])
        return out

    def load_weights(self, snapshot):
        self.version = snapshot["version"]
        return self.version

    def checksums(self):
        return {"version": str(self.version)}

    def get_version(self):
        return self.version


class FakeLearner:
    def __init__(self, delay=0.02, version=0):
        self.version, self.delay, self.seen = version, delay, []
        self._refs = []

    def train_step(self, rollouts):
        time.sleep(self.delay)
        self.seen.append([self.version - r.policy_version for r in rollouts])
        return {"reward": float(sum(r.score for r in rollouts) / len(rollouts)), "kl": 0.0}

    def publish(self):
        self.version += 1
        ref = ray.put({"version": self.version})
        self._refs = (self._refs + [ref])[-2:]
        return self.version, ref

    def save_checkpoint(self, path):
        Path(path).mkdir(parents=True)
        (Path(path) / "learner_state.json").write_text("{}")

    def load_checkpoint(self, path):
        return self.version

    def staleness(self):
        return self.seen


class FakePool:
    """In-process stand-in with the RewardPool's submit/ready/score surface."""

    def __init__(self):
        self.done, self.next_id = [], 0

    def has_capacity(self):
        return True

    def submit(self, rollouts, block=True, timeout=None):
        self.done.append((self.next_id, self.score(rollouts)))
        self.next_id += 1
        return self.next_id - 1

    def ready(self, timeout=0.0):
        out, self.done = self.done, []
        return out

    def score(self, rollouts):
        import dataclasses

        return [dataclasses.replace(r, score=1.0, ref_logprobs=[0.0] * len(r.response_ids)) for r in rollouts]

    def stats(self):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def shutdown(self):
        pass


def test_fakes_implement_the_driver_seams():
    # The driver is written against these Protocols; the real actors implement them too.
    from raylhf.actors.generator import GeneratorActor
    from raylhf.learners.ppo_actor import PPOLearnerActor
    from raylhf.reward_service.pool import RewardPool

    assert isinstance(FakeGenerator(), GeneratorService) and isinstance(FakeLearner(), LearnerService)
    assert isinstance(FakePool(), ScoringPool)
    for actor_class, protocol in ((GeneratorActor, GeneratorService), (PPOLearnerActor, LearnerService)):
        assert issubclass(actor_class.__ray_metadata__.modified_class, protocol), actor_class
    assert issubclass(RewardPool, ScoringPool)


RemoteGenerator, RemoteLearner = ray.remote(FakeGenerator), ray.remote(FakeLearner)


def _gen(i, **kwargs):
    return NamedActor(f"generator-{i}", RemoteGenerator.remote(**kwargs))


def _learner(**kwargs):
    return NamedActor("learner", RemoteLearner.remote(**kwargs))


def _prompts(n=20):
    return [Prompt(f"p{i}", f"prompt number {i}") for i in range(n)]


def _driver(generators, learner, mode="async", steps=6, buffer_size=32, **resume):
    cfg = PPOConfig(total_steps=steps, batch_size=8, prompts_per_request=4, sync_every=1, buffer_size=buffer_size,
                    timeout_s=30.0, mode=mode)
    return PPODriver(cfg, generators=generators, learner=learner, pool=FakePool(), tokenizer=_Tokenizer(),
                     cursor=PromptCursor(_prompts(), seed=0), sampling=SamplingSpec(), in_flight=2, **resume)


def test_async_loop_trains_publishes_and_bounds_staleness(ray_session):
    gens = [_gen(0), _gen(1)]
    learner = _learner()
    stats = _driver(gens, learner, "async", steps=6, buffer_size=16).run()
    assert stats.steps == 6 and stats.rollouts == 48 and stats.final_version == 6
    assert ray.get([g.handle.get_version.remote() for g in gens]) == [6, 6]  # every generator applied the newest
    # A bounded system (16 rollouts = 2 batches) keeps rollouts at most a few versions old.
    seen = [s for batch in ray.get(learner.handle.staleness.remote()) for s in batch]
    assert max(seen) <= 3 and sum(stats.staleness.values()) == 48


def test_sync_loop_is_on_policy(ray_session):
    gens = [_gen(0)]
    learner = _learner()
    stats = _driver(gens, learner, "sync", steps=3).run()
    assert stats.steps == 3 and set(stats.staleness) == {0}
    assert all(s == 0 for batch in ray.get(learner.handle.staleness.remote()) for s in batch)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_generator_failure_names_the_actor(ray_session, mode):
    gens = [_gen(0), _gen(1, fail_after=1)]
    with pytest.raises(ActorFailure, match=r"generator-1: generate failed: .*engine exploded"):
        _driver(gens, _learner(), mode, steps=50).run()


def test_dead_learner_surfaces_with_its_name(ray_session):
    gens = [_gen(0)]
    learner = _learner(delay=0.5)
    driver = _driver(gens, learner, "async", steps=50)
    import threading

    threading.Timer(1.0, lambda: ray.kill(learner.handle)).start()
    with pytest.raises(ActorFailure, match="learner"):
        driver.run()


def test_prompt_cursor_cycles_deterministically_and_resumes():
    prompts = _prompts(5)
    a, b = PromptCursor(prompts, seed=3), PromptCursor(prompts, seed=3)
    first = [p.prompt_id for p in a.take(7)]
    assert first == [p.prompt_id for p in b.take(7)]
    assert sorted(first[:5]) == sorted(p.prompt_id for p in prompts)  # each epoch is a permutation
    state = a.state_dict()
    c = PromptCursor(prompts, seed=3)
    c.load_state_dict(state)
    assert [p.prompt_id for p in c.take(6)] == [p.prompt_id for p in a.take(6)]


def test_pairwise_agreement_by_hand():
    # group 0: ranking [2, 0, 1] -> pairs (2>0), (2>1), (0>1); scores 0.1, 0.5, 0.9:
    #   s2>s0 yes, s2>s1 yes, s0>s1 no -> 2 of 3
    # group 1: ranking [1, 0] with tied scores -> half a pair
    assert pairwise_agreement([[0.1, 0.5, 0.9], [1.0, 1.0]], [[2, 0, 1], [1, 0]]) == pytest.approx(2.5 / 4)


def test_pairwise_agreement_on_equal_length_pairs_only():
    # group 0 lengths [3, 3, 5]: only the pair (0, 1) has equal lengths; ranked 0 > 1 with s0 < s1 -> 0 of 1
    # group 1 lengths [2, 2]: the pair (1 > 0) with s1 > s0 -> 1 of 1
    scores, rankings = [[0.1, 0.5, 0.9], [0.0, 1.0]], [[2, 0, 1], [1, 0]]
    assert pairwise_agreement(scores, rankings, lengths=[[3, 3, 5], [2, 2]]) == pytest.approx(1 / 2)
    assert math.isnan(pairwise_agreement(scores, rankings, lengths=[[1, 2, 3], [1, 2]]))


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_resumed_driver_runs_on_from_its_step_with_the_learners_weights(ray_session, mode):
    # A learner restored at version 4 next to generators freshly started from the initial policy (version 0).
    gens = [_gen(0), _gen(1)]
    learner = _learner(version=4)
    stats = _driver(gens, learner, mode, steps=6, buffer_size=16, start_step=4, start_version=4).run()
    assert stats.steps == 6 and stats.rollouts == 16  # two more steps of 8 rollouts
    # The restored weights went out before the first generate call: no rollout of the initial policy
    # (4 versions behind) was trained on.
    seen = [s for batch in ray.get(learner.handle.staleness.remote()) for s in batch]
    assert max(seen) <= (0 if mode == "sync" else 3), seen
    assert ray.get([g.handle.get_version.remote() for g in gens]) == [stats.final_version] * 2


def test_ppo_checkpoint_is_swapped_in_whole_and_survives_a_crash_mid_swap(ray_session, tmp_path):
    from raylhf.orchestration.ppo_checkpoint import DRIVER_STATE, PPOCheckpoint

    checkpoint = PPOCheckpoint(tmp_path)
    state_dir = tmp_path / "checkpoints" / "ppo"
    learner, cursor = _learner(), PromptCursor(_prompts(), seed=0)
    assert checkpoint.latest() is None and not checkpoint.resumable(10)
    checkpoint.save(learner, cursor, 3, timeout_s=30)
    cursor.take(5)
    checkpoint.save(learner, cursor, 6, timeout_s=30)
    assert sorted(p.name for p in state_dir.parent.iterdir()) == ["ppo"]  # no temporary left behind
    state = json.loads((state_dir / DRIVER_STATE).read_text())
    assert state["steps"] == 6 and state["cursor"] == cursor.state_dict()
    assert checkpoint.resumable(10) and not checkpoint.resumable(6)
    restored = PromptCursor(_prompts(), seed=0)
    assert checkpoint.restore(learner, restored, timeout_s=30) == (6, 0)
    assert restored.state_dict() == cursor.state_dict()
    # A crash after the old checkpoint was moved aside and before the new one was moved in.
    state_dir.rename(state_dir.with_name("ppo.old"))
    assert checkpoint.latest() == state_dir.with_name("ppo.old")
    # A crash while the new checkpoint was being written: the incomplete one (no driver state) is not used.
    (state_dir.with_name("ppo.tmp") / "policy").mkdir(parents=True)
    assert checkpoint.latest() == state_dir.with_name("ppo.old")


def test_resumed_metrics_drop_the_rows_logged_after_the_checkpoint(tmp_path):
    from raylhf.learners.training import MetricsLog

    path = tmp_path / "metrics.jsonl"
    ppo, rm = MetricsLog(path, "ppo"), MetricsLog(path, "rm")
    rm(7, {"loss": 1.0})
    for step in range(1, 6):
        ppo(step, {"reward": float(step)})
    assert ppo.truncate_after(3) == 2  # steps 4 and 5 came after the checkpoint at 3
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("rm", 7), ("ppo", 1), ("ppo", 2), ("ppo", 3)]
    assert ppo.truncate_after(3) == 0
