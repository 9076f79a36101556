"""The `supervision` section: per-kind policies resolved from one set of limits, and the keys it replaced
failing with the name of their replacement."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from raylhf.configs.loader import REPLACED_KEYS, ConfigError, load_config, save_config
from raylhf.configs.schema import RunConfig, SupervisionConfig
from raylhf.contracts.supervision import SupervisionPolicy


def test_scorer_policy_overrides_the_timeouts_and_inherits_the_rest():
    s = SupervisionConfig()
    assert s.policy("scorer") == SupervisionPolicy(call_timeout_s=120.0, startup_timeout_s=300.0,
                                                   max_consecutive_restarts=3, backoff_s=2.0, max_attempts=3)
    for kind in ("generator", "learner"):
        assert s.policy(kind) == SupervisionPolicy(call_timeout_s=600.0, startup_timeout_s=600.0,
                                                   max_consecutive_restarts=3, backoff_s=2.0, max_attempts=3)


def test_section_values_reach_every_kind_that_does_not_override_them():
    cfg = load_config("tiny", ["supervision.call_timeout_s=30", "supervision.backoff_s=0",
                               "supervision.learner.max_consecutive_restarts=0"])
    gen, scorer, learner = (cfg.supervision.policy(k) for k in ("generator", "scorer", "learner"))
    assert gen.call_timeout_s == learner.call_timeout_s == 30.0
    assert scorer.call_timeout_s == 120.0  # its own override still wins
    assert gen.backoff_s == scorer.backoff_s == learner.backoff_s == 0.0
    assert learner.max_consecutive_restarts == 0 and gen.max_consecutive_restarts == 3


def test_an_override_back_to_unset_inherits():
    cfg = load_config("tiny", ["supervision.scorer.call_timeout_s=null", "supervision.call_timeout_s=60"])
    assert cfg.supervision.policy("scorer").call_timeout_s == 60.0
    assert cfg.supervision.policy("scorer").startup_timeout_s == 300.0


def test_setting_one_scorer_key_keeps_the_scorers_other_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("supervision:\n  scorer:\n    max_attempts: 5\n")
    policy = load_config(str(path)).supervision.policy("scorer")
    assert (policy.call_timeout_s, policy.startup_timeout_s, policy.max_attempts) == (120.0, 300.0, 5)
    assert load_config("tiny", ["supervision.scorer.backoff_s=1"]).supervision.policy("scorer").call_timeout_s == 120.0


def test_policy_is_frozen_and_kinds_are_checked():
    policy = SupervisionConfig().policy("generator")
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.call_timeout_s = 1.0
    with pytest.raises(ValueError, match="unknown actor kind 'critic'"):
        SupervisionConfig().policy("critic")


@pytest.mark.parametrize(
    "override,needle",
    [
        ("supervision.call_timeout_s=0", "supervision.call_timeout_s: Input should be greater than 0"),
        ("supervision.scorer.call_timeout_s=-1", "supervision.scorer.call_timeout_s: Input should be greater than 0"),
        ("supervision.startup_timeout_s=0", "supervision.startup_timeout_s: Input should be greater than 0"),
        ("supervision.max_consecutive_restarts=-1",
         "supervision.max_consecutive_restarts: Input should be greater than or equal to 0"),
        ("supervision.generator.backoff_s=-0.5",
         "supervision.generator.backoff_s: Input should be greater than or equal to 0"),
        ("supervision.learner.max_attempts=0",
         "supervision.learner.max_attempts: Input should be greater than or equal to 1"),
        ("supervision.max_attempts=2.5", "supervision.max_attempts: Input should be a valid integer"),
        ("supervision.critic.max_attempts=1", "supervision.critic.max_attempts: unknown key"),
        ("supervision.scorer.timeout_s=1", "supervision.scorer.timeout_s: unknown key; allowed: call_timeout_s"),
    ],
)
def test_bad_supervision_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as exc:
        load_config("tiny", [override])
    assert needle in str(exc.value)


def test_supervision_overrides_survive_a_saved_config(tmp_path):
    cfg = load_config("tiny", ["supervision.generator.max_attempts=5", "supervision.scorer.call_timeout_s=null"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load(path.read_text())["supervision"]["scorer"]["call_timeout_s"] is None
    assert load_config(str(path)) == cfg
    assert RunConfig.model_validate(yaml.safe_load(path.read_text())).supervision.policy("generator").max_attempts == 5


def test_replaced_keys_table():
    assert REPLACED_KEYS == {
        "ppo.timeout_s": "supervision.call_timeout_s",
        "ppo.actor_startup_timeout_s": "supervision.startup_timeout_s",
        "ppo.max_consecutive_restarts": "supervision.max_consecutive_restarts",
        "reward.request_timeout_s": "supervision.scorer.call_timeout_s",
        "reward.startup_timeout_s": "supervision.scorer.startup_timeout_s",
        "reward.startup_attempts": "supervision.scorer.max_consecutive_restarts",
        "reward.startup_backoff_s": "supervision.scorer.backoff_s",
        "reward.max_attempts": "supervision.scorer.max_attempts",
    }
    for new in REPLACED_KEYS.values():  # every replacement is a key the schema has
        load_config("tiny", [f"{new}=1"])


@pytest.mark.parametrize("old,new", sorted(REPLACED_KEYS.items()))
def test_a_replaced_key_as_an_override_names_its_replacement(old, new):
    with pytest.raises(ConfigError) as exc:
        load_config("tiny", [f"{old}=10"])
    assert f"override '{old}=10': {old} was replaced by {new}" in str(exc.value)


@pytest.mark.parametrize("old,new", sorted(REPLACED_KEYS.items()))
def test_a_replaced_key_in_a_file_names_the_file_and_its_replacement(tmp_path, old, new):
    section, key = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({section: {key: 10}}))
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    assert f"invalid config ({path}):" in str(exc.value)
    assert f"{old} was replaced by {new}" in str(exc.value)


def test_every_replaced_key_of_a_file_is_reported_at_once(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("ppo:\n  timeout_s: 60\n  kl_coef: 0.1\nreward:\n  max_attempts: 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    assert str(exc.value).splitlines()[1:] == [
        "  ppo.timeout_s was replaced by supervision.call_timeout_s",
        "  reward.max_attempts was replaced by supervision.scorer.max_attempts "
        "(or supervision.max_attempts for every actor kind)",
    ]


def test_cli_exits_2_naming_the_replacement():
    out = subprocess.run([sys.executable, "-m", "raylhf", "config", "reward.request_timeout_s=60"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert "reward.request_timeout_s was replaced by supervision.scorer.call_timeout_s" in out.stderr
