"""The PPO driver's loop with in-process stand-in actors (`LocalActor`, no Ray; the real actors are exercised in
test_pipeline.py)."""

import json
import math
import os
import time
import uuid
from pathlib import Path

import pytest

from raylhf.configs.schema import PPOConfig, SupervisionConfig
from raylhf.contracts import remote
from raylhf.contracts.local_actor import LocalActor
from raylhf.contracts.model_files import local_dir
from raylhf.contracts.protocols import (ActorInfo, GenerationRequest, GeneratorService, LearnerService, PoolStats, RequestError,
                                        SamplingSpec, ScoringPool)
from raylhf.contracts.records import Prompt, Rollout
from raylhf.contracts.remote import ActorFailure, NamedActor
from raylhf.orchestration.cursor import PromptCursor
from raylhf.orchestration.driver import PPODriver
from raylhf.orchestration.evaluation import pairwise_agreement
from raylhf.orchestration.ppo_checkpoint import PPOCheckpoint
from raylhf.orchestration.run_stats import RunStats


class _Format:
    """Stands in for `PromptFormat`: BOS and one token per prompt."""

    def prompt_ids(self, record):
        return [1, len(record.prompt) % 50 + 3]


class FakeGenerator:
    """Serves `GeneratorService`; can raise after some calls, or hang (sleep far past any deadline)."""

    def __init__(self, fail_after=None, hang_after=None, delay=0.01, hang_load_after=None):
        self.version, self.calls, self.fail_after, self.hang_after, self.delay = 0, 0, fail_after, hang_after, delay
        self.loads, self.hang_load_after = 0, hang_load_after

    def ready(self):
        return ActorInfo("generator", os.getpid(), "local", [])

    def generate(self, requests, sampling):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("engine exploded")
        if self.hang_after is not None and self.calls > self.hang_after:
            time.sleep(3600)
        time.sleep(self.delay)
        out = []
        for r in requests:
            if r.prompt_id == "bad":
                out.append(RequestError(r.prompt_id, "empty prompt"))
            else:
                out.append([Rollout(r.prompt_id, list(r.prompt_ids), [5, 2], [-1.0, -0.5], self.version, "eos",
                                    sample_id=uuid.uuid4().hex)])
        return out

    def load_weights(self, snapshot):
        self.loads += 1
        if self.hang_load_after is not None and self.loads > self.hang_load_after:
            time.sleep(3600)  # as an in-flight load waits on a generate call that hangs
        self.version = snapshot["version"]
        return self.version

    def checksums(self):
        return {"version": str(self.version)}

    def get_version(self):
        return self.version


class FakeLearner:
    """Serves `LearnerService`; its checkpoint is its version. Can hang in a given train step."""

    def __init__(self, delay=0.02, version=0, hang_at_step=None):
        self.version, self.delay, self.seen, self.steps, self.hang_at_step = version, delay, [], 0, hang_at_step
        self._refs = []

    def ready(self):
        return ActorInfo("learner", os.getpid(), "local", [])

    def train_step(self, rollouts):
        self.steps += 1
        if self.hang_at_step is not None and self.steps == self.hang_at_step:
            time.sleep(3600)
        time.sleep(self.delay)
        self.seen.append([self.version - r.policy_version for r in rollouts])
        return {"reward": float(sum(r.score for r in rollouts) / len(rollouts)), "kl": 0.0}

    def publish(self, advance=True):
        self.version += int(advance)
        return self.version, {"version": self.version}  # in process, the snapshot itself stands for its ref

    def save_checkpoint(self, path, driver_node_id=None):
        Path(path).mkdir(parents=True)
        (Path(path) / "learner_state.json").write_text(json.dumps({"version": self.version}))

    def load_checkpoint(self, path):
        self.version = json.loads((Path(local_dir(path)) / "learner_state.json").read_text())["version"]
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
        return PoolStats()

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


def _gen(i, in_flight=False, **kwargs):
    # In flight or not, a LocalActor runs a call sent to a concurrency group (the in-flight weight loads) beside
    # the ordered ones, as GeneratorActorInFlight does.
    return NamedActor(f"generator-{i}", LocalActor(FakeGenerator(**kwargs)))


def _learner(**kwargs):
    return NamedActor("learner", LocalActor(FakeLearner(**kwargs)))


def _versions(generators):
    return [g.handle.obj.version for g in generators]


def _prompts(n=20):
    return [Prompt(f"p{i}", f"prompt number {i}") for i in range(n)]


class Respawner:
    """Starts replacements of lost stand-ins as `PPOActors` starts real ones (the `ActorFactory` seam)."""

    def __init__(self, generators, learner, generator_kwargs=None, in_flight=False):
        self.generators, self.learner_actor = list(generators), learner
        self.generator_kwargs = generator_kwargs or {}
        self.in_flight = in_flight
        self.spawned = []

    def spawn_generator(self, index):
        self.generators[index] = _gen(index, self.in_flight, **self.generator_kwargs)
        self.spawned.append(f"generator-{index}")
        return self.generators[index]

    def spawn_learner(self):
        self.learner_actor = _learner()
        self.spawned.append("learner")
        return self.learner_actor


class RecordingObserver:
    def __init__(self):
        self.steps = []

    def on_rollouts(self, batch):
        pass

    def on_step(self, step, metrics):
        self.steps.append(step)

    def on_rewind(self, step):
        self.steps = [s for s in self.steps if s <= step]


def _driver(generators, learner, mode="async", steps=6, buffer_size=32, timeout_s=30.0, checkpoint_every=0,
            **kwargs):
    cfg = PPOConfig(total_steps=steps, batch_size=8, prompts_per_request=4, sync_every=1, buffer_size=buffer_size,
                    mode=mode, checkpoint_every=checkpoint_every)
    supervision = SupervisionConfig(call_timeout_s=timeout_s, startup_timeout_s=30.0, backoff_s=0.1)
    if "respawn" in kwargs:
        kwargs["factory"] = kwargs.pop("respawn")
    return PPODriver(cfg, supervision, generators=generators, learner=learner, pool=FakePool(), prompt_format=_Format(),
                     cursor=PromptCursor(_prompts(), seed=0), sampling=SamplingSpec(seed=0), in_flight=2, **kwargs)


def test_async_loop_trains_publishes_and_bounds_staleness():
    gens = [_gen(0), _gen(1)]
    learner = _learner()
    stats = _driver(gens, learner, "async", steps=6, buffer_size=16).run()
    assert stats.steps == 6 and stats.rollouts == 48 and stats.final_version == 6
    assert _versions(gens) == [6, 6]  # every generator applied the newest
    # A bounded system (16 rollouts = 2 batches) keeps rollouts at most a few versions old.
    seen = [s for batch in learner.handle.obj.staleness() for s in batch]
    assert max(seen) <= 3 and sum(stats.staleness.values()) == 48
    assert stats.accounting["accounting_balanced"] and stats.accounting["samples_trained"] == 48


def test_sync_loop_is_on_policy():
    gens = [_gen(0)]
    learner = _learner()
    stats = _driver(gens, learner, "sync", steps=3).run()
    assert stats.steps == 3 and set(stats.staleness) == {0}
    assert all(s == 0 for batch in learner.handle.obj.staleness() for s in batch)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_generator_failure_without_healing_names_the_actor(mode):
    gens = [_gen(0), _gen(1, fail_after=1)]
    with pytest.raises(ActorFailure, match=r"generator-1: generate failed: .*engine exploded"):
        _driver(gens, _learner(), mode, steps=50).run()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_failing_and_hung_generators_are_replaced_and_lose_nothing(tmp_path, mode):
    # generator-0 raises on its 3rd call, generator-1 hangs on its 2nd; their replacements work.
    gens, learner = [_gen(0, fail_after=2), _gen(1, hang_after=1)], _learner()
    respawn = Respawner(gens, learner)
    observer = RecordingObserver()
    stats = _driver(gens, learner, mode, steps=8, buffer_size=16, timeout_s=3.0, checkpoint_every=2,
                    checkpoint=PPOCheckpoint(tmp_path), respawn=respawn, observer=observer).run()
    assert stats.steps == 8 and observer.steps == list(range(1, 9))  # each step once
    assert sorted(respawn.spawned) == ["generator-0", "generator-1"]
    faults = {f.actor: f for f in stats.faults}
    assert faults["generator-0"].kind == "error" and "engine exploded" in faults["generator-0"].cause
    assert faults["generator-1"].kind == "timeout"
    assert stats.accounting["generator_restarts"] == 2 and stats.accounting["samples_resubmitted"] > 0
    assert stats.accounting["accounting_balanced"], stats.accounting
    # the replacements hold the newest weights
    assert _versions(respawn.generators) == [stats.final_version] * 2


def test_in_flight_loads_run_beside_generate_calls_and_still_heal(tmp_path):
    """With in-flight weight updates a load is not queued behind generate calls: it has its own deadline, and
    a generate call that hangs (or a load stuck behind it) still gets the actor replaced."""
    # generator-0 hangs in its 2nd generate call, generator-1's 3rd load never returns (its generate calls do).
    gens = [_gen(0, True, hang_after=1), _gen(1, True, hang_load_after=2)]
    learner = _learner()
    respawn = Respawner(gens, learner, in_flight=True)
    stats = _driver(gens, learner, "async", steps=8, buffer_size=16, timeout_s=3.0, checkpoint_every=2,
                    checkpoint=PPOCheckpoint(tmp_path), respawn=respawn, weight_updates="in_flight").run()
    assert stats.steps == 8 and sorted(s for s in respawn.spawned if s != "learner") == ["generator-0", "generator-1"]
    faults = {f.actor: f for f in stats.faults}
    assert faults["generator-0"].kind == "timeout" and faults["generator-1"].kind == "timeout"
    assert stats.accounting["accounting_balanced"], stats.accounting
    assert _versions(respawn.generators) == [stats.final_version] * 2


def test_a_generator_that_keeps_failing_ends_the_run_naming_it(tmp_path):
    gens, learner = [_gen(0, fail_after=0)], _learner()
    respawn = Respawner(gens, learner, generator_kwargs={"fail_after": 0})
    with pytest.raises(ActorFailure, match=r"generator-0: generate failed: .*engine exploded"):
        _driver(gens, learner, "async", steps=5, respawn=respawn).run()
    assert len(respawn.spawned) == SupervisionConfig().max_consecutive_restarts


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_lost_learner_is_restored_from_the_newest_checkpoint(tmp_path, fault):
    import threading

    gens = [_gen(0), _gen(1)]
    learner = _learner(delay=0.2, hang_at_step=7 if fault == "hung" else None)
    respawn = Respawner(gens, learner)
    observer = RecordingObserver()
    driver = _driver(gens, learner, "async", steps=12, buffer_size=16, timeout_s=3.0, checkpoint_every=3,
                     checkpoint=PPOCheckpoint(tmp_path), respawn=respawn, observer=observer)
    if fault == "killed":
        threading.Timer(1.5, lambda: remote.kill(learner.handle)).start()
    stats = driver.run()
    assert stats.steps == 12 and observer.steps == list(range(1, 13))  # rewound steps are reported once
    assert respawn.spawned == ["learner"]
    (lost,) = [f for f in stats.faults if f.actor == "learner"]
    assert lost.kind == ("timeout" if fault == "hung" else "died") and 0 <= lost.lost_steps < 3
    assert [m["step"] for m in stats.metrics] == list(range(1, 13))
    assert stats.final_version == 12 and stats.accounting["accounting_balanced"], stats.accounting
    assert _versions(respawn.generators) == [12, 12]


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_resumed_driver_runs_on_from_its_checkpoint_with_the_learners_weights(tmp_path, mode):
    checkpoint = PPOCheckpoint(tmp_path)
    first = _driver([_gen(0), _gen(1)], _learner(), mode, steps=4, buffer_size=16, checkpoint=checkpoint).run()
    assert checkpoint.step() == 4 and first.final_version == 4
    # A new learner and generators freshly started from the initial policy (version 0).
    gens, learner = [_gen(0), _gen(1)], _learner()
    stats = _driver(gens, learner, mode, steps=6, buffer_size=16, checkpoint=checkpoint, resume=True).run()
    assert stats.steps == 6 and stats.rollouts == 16  # two more steps of 8 rollouts
    # The restored weights went out before the first generate call: no rollout of the initial policy
    # (4 versions behind) was trained on, and the version did not move on a republish.
    seen = [s for batch in learner.handle.obj.staleness() for s in batch]
    assert max(seen) <= (0 if mode == "sync" else 3), seen
    assert stats.final_version == 6
    assert _versions(gens) == [6, 6]
    assert stats.accounting["accounting_balanced"]


def test_prompt_cursor_cycles_deterministically_and_resumes():
    prompts = _prompts(5)
    a, b = PromptCursor(prompts, seed=3), PromptCursor(prompts, seed=3)
    first = [d.prompt.prompt_id for d in a.take(7)]
    assert first == [d.prompt.prompt_id for d in b.take(7)]
    assert sorted(first[:5]) == sorted(p.prompt_id for p in prompts)  # each epoch is a permutation
    state = a.state_dict()
    c = PromptCursor(prompts, seed=3)
    c.load_state_dict(state)
    assert [d.key for d in c.take(6)] == [d.key for d in a.take(6)]


def test_prompt_cursor_reissues_outstanding_draws_first_and_seeds_each_epoch():
    from raylhf.orchestration.cursor import epoch_seed

    prompts = _prompts(3)
    a = PromptCursor(prompts, seed=1)
    draws = a.take(4)  # the 4th is epoch 1
    assert [d.epoch for d in draws] == [0, 0, 0, 1]
    state = a.state_dict(outstanding=draws[1:3])
    b = PromptCursor(prompts, seed=1)
    b.load_state_dict(state)
    assert [d.key for d in b.take(4)] == [d.key for d in draws[1:3]] + [d.key for d in a.take(2)]
    assert epoch_seed(7, 0) == 7 and epoch_seed(7, 1) != epoch_seed(7, 2) != 7


def test_ledger_adds_up_through_refusals_rejects_staleness_and_a_restore():
    from raylhf.orchestration.cursor import Draw
    from raylhf.orchestration.ledger import SampleLedger

    def rollouts(draw, n):
        return [Rollout(draw.prompt.prompt_id, [1], [2], [-1.0], 0, "eos", sample_id=uuid.uuid4().hex)
                for _ in range(n)]

    ledger = SampleLedger(samples_per_prompt=2)
    draws = [Draw(p, 0) for p in _prompts(4)]
    ledger.taken(draws)
    ledger.generated(draws[0], None)  # refused: both slots
    r1, r2, r3 = rollouts(draws[1], 2), rollouts(draws[2], 2), rollouts(draws[3], 2)
    for d, r in zip(draws[1:], (r1, r2, r3)):
        ledger.generated(d, r)
    assert ledger.rejected_among(r1, r1[:1]) == r1[1:]  # one quarantined by the reward service
    ledger.resolve(r1[:1] + r2[:1], "trained")
    ledger.resolve(r2[1:], "dropped_stale")
    # 4 draws x 2 = 8 slots: 2 refused, 1 rejected, 2 trained, 1 stale, 2 in the system (draw 3)
    assert ledger.balance() == {"taken_slots": 8, "accounted_slots": 8, "in_system": 2, "ok": True}
    assert ledger.open_draws() == [draws[3]]
    # A checkpoint counts the open draw as not started; after a restore it is reissued, not taken again.
    state = ledger.state_dict()
    restored = SampleLedger(samples_per_prompt=2)
    restored.load_state_dict(state, [draws[3]])
    restored.taken([draws[3]])
    assert restored.counts["taken"] == 4 and restored.counts["reissued"] == 1
    again = rollouts(draws[3], 2)
    restored.generated(draws[3], again)
    restored.resolve(again, "trained")
    assert restored.balance()["ok"] and restored.in_system == 0 and restored.counts["trained"] == 4


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


def test_ppo_checkpoint_is_swapped_in_whole_and_survives_a_crash_mid_swap(tmp_path):
    from raylhf.orchestration.ppo_checkpoint import DRIVER_STATE

    checkpoint = PPOCheckpoint(tmp_path)
    state_dir = tmp_path / "checkpoints" / "ppo"
    learner = _learner(version=3)
    assert checkpoint.latest() is None and not checkpoint.resumable(10)
    checkpoint.save(learner, 3, {"cursor": {"epoch": 0, "position": 3}}, timeout_s=30)
    checkpoint.save(learner, 6, {"cursor": {"epoch": 0, "position": 8}}, timeout_s=30)
    assert sorted(p.name for p in state_dir.parent.iterdir()) == ["ppo"]  # no temporary left behind
    state = json.loads((state_dir / DRIVER_STATE).read_text())
    assert state == {"steps": 6, "cursor": {"epoch": 0, "position": 8}}
    assert checkpoint.resumable(10) and not checkpoint.resumable(6)
    assert checkpoint.restore(_learner(), timeout_s=30) == (6, 3, {"cursor": {"epoch": 0, "position": 8}})
    # A crash after the old checkpoint was moved aside and before the new one was moved in.
    state_dir.rename(state_dir.with_name("ppo.old"))
    assert checkpoint.latest() == state_dir.with_name("ppo.old")
    # A crash while the new checkpoint was being written: the incomplete one (no driver state) is not used,
    # and the next save does not delete the only complete checkpoint before its own is complete.
    (state_dir.with_name("ppo.tmp") / "policy").mkdir(parents=True)
    assert checkpoint.latest() == state_dir.with_name("ppo.old")
    checkpoint._settle()
    assert checkpoint.latest() == state_dir and checkpoint.step() == 6
    # A complete new checkpoint left in ppo.tmp (crash before the rename) is the one used, and kept.
    checkpoint.save(learner, 9, {}, timeout_s=30)
    state_dir.rename(state_dir.with_name("ppo.tmp"))
    assert checkpoint.step() == 9
    checkpoint.save(learner, 12, {}, timeout_s=30)
    assert checkpoint.step() == 12 and sorted(p.name for p in state_dir.parent.iterdir()) == ["ppo"]


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


def test_summary_divides_busy_time_by_wall_time_and_actor_count():
    stats = RunStats(steps=4, rollouts=256, wall_s=10.0, generator_busy_s=12.0, scorer_busy_s=5.0, learner_busy_s=9.0)
    summary = stats.summary(n_generators=2, n_scorers=2)
    assert summary["generator_busy"] == 12.0 / (10.0 * 2)
    assert summary["scorer_busy"] == 5.0 / (10.0 * 2)
    assert summary["learner_busy"] == 9.0 / 10.0


class EvaluatingObserver(RecordingObserver):
    """Evaluates on the first generator after chosen steps (as the in-training evaluation does through
    `PPODriver.generate`), killing that generator just before each evaluation."""

    def __init__(self, driver_box, at_steps):
        super().__init__()
        self.driver_box, self.at_steps, self.answers = driver_box, at_steps, []

    def on_step(self, step, metrics):
        super().on_step(step, metrics)
        if step in self.at_steps:
            driver = self.driver_box[0]
            remote.kill(driver.generators[0].handle)
            requests = [GenerationRequest(f"eval-{i}", (3, 4)) for i in range(3)]
            self.answers.append(driver.generate(requests, SamplingSpec(seed=0)))


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_generators_killed_during_in_training_evaluation_are_replaced_and_every_step_logged_once(tmp_path, mode):
    gens, learner = [_gen(0), _gen(1)], _learner()
    respawn = Respawner(gens, learner)
    box = []
    observer = EvaluatingObserver(box, at_steps={2, 5})
    driver = _driver(gens, learner, mode, steps=6, buffer_size=16, timeout_s=3.0, checkpoint_every=2,
                     checkpoint=PPOCheckpoint(tmp_path), respawn=respawn, observer=observer)
    box.append(driver)
    stats = driver.run()
    assert stats.steps == 6 and observer.steps == list(range(1, 7))  # each step once
    assert [len(a) for a in observer.answers] == [3, 3] and all(r is not None for a in observer.answers for r in a)
    assert respawn.spawned == ["generator-0", "generator-0"]
    assert [(f.actor, f.kind) for f in stats.faults] == [("generator-0", "died")] * 2
    assert stats.accounting["generator_restarts"] == 2 and stats.accounting["accounting_balanced"], stats.accounting
    assert _versions(respawn.generators) == [stats.final_version] * 2


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_each_phase_is_timed_once_so_the_phases_add_up_to_at_most_the_wall_time(tmp_path, mode):
    # Publishing, checkpoints and the per-step observers are phases of their own, not part of `train`.
    slow = RecordingObserver()
    slow.on_step = lambda step, metrics: time.sleep(0.05)
    stats = _driver([_gen(0)], _learner(), mode, steps=6, buffer_size=16, checkpoint_every=2,
                    checkpoint=PPOCheckpoint(tmp_path), observer=slow).run()
    assert {"train", "publish", "checkpoint", "observe"} <= set(stats.phases)
    assert sum(stats.phases.values()) <= stats.wall_s + 1e-6, (stats.phases, stats.wall_s)
    assert stats.phases["observe"] >= 6 * 0.05 and stats.phases["train"] < stats.wall_s - stats.phases["observe"]


def test_actor_classes_serve_their_protocols_with_the_same_signatures():
    # Protocols are the seams the driver is written against: a method the driver calls must take the same
    # parameters on the real actor class as on its Protocol (names and order), or a stand-in passes tests the
    # real actor would fail.
    import inspect

    from raylhf.actors.generator import GeneratorActor
    from raylhf.learners.ppo_actor import PPOLearnerActor

    for actor_class, protocol in ((GeneratorActor, GeneratorService), (PPOLearnerActor, LearnerService)):
        served = actor_class.__ray_metadata__.modified_class
        for name in (m for m in vars(protocol) if not m.startswith("_") and callable(getattr(protocol, m))):
            want = list(inspect.signature(getattr(protocol, name)).parameters)
            got = list(inspect.signature(getattr(served, name)).parameters)
            assert got[: len(want)] == want, (actor_class.__name__, name, got, want)
