import subprocess
import sys

import pytest
import yaml

from raylhf.configs.loader import ConfigError, explain, load_config, preset_names, save_config
from raylhf.configs.schema import RunConfig


def test_presets_load_and_tiny_is_default():
    assert {"tiny", "small"} <= set(preset_names())
    cfg = load_config()
    assert cfg.model.preset == "tiny"
    assert load_config("small").model.preset == "small"


def test_dotted_overrides_are_typed():
    cfg = load_config("tiny", ["ppo.kl_coef=0.05", "sft.epochs=3", "generation.engine=hf", "ray.address=auto"])
    assert cfg.ppo.kl_coef == 0.05 and cfg.sft.epochs == 3
    assert cfg.generation.engine == "hf" and cfg.ray.address == "auto"


@pytest.mark.parametrize(
    "override,needle",
    [
        ("ppo.kl_coeff=0.1", "ppo.kl_coeff: unknown key; allowed: num_cpus, num_gpus, resources, cpus, kl_coef"),
        ("nonsense=1", "nonsense: unknown key"),
        ("ppo.kl_coef=-1", "ppo.kl_coef: Input should be greater than or equal to 0"),
        ("sft.epochs=two", "sft.epochs: Input should be a valid integer"),
        ("sft.epochs=1.5", "sft.epochs: Input should be a valid integer"),
        ("generation.engine=tgi", "generation.engine: Input should be 'vllm' or 'hf'"),
        ("collect.k=10", "collect.k: Input should be less than or equal to 9"),
        ("data.on_bad_rows=ignore", "data.on_bad_rows: Input should be 'error' or 'skip'"),
        ("noequals", "expected key.path=value"),
        ("ppo.kl_coef=.nan", "ppo.kl_coef: Input should be a finite number"),
        ("supervision.call_timeout_s=.inf", "supervision.call_timeout_s: Input should be a finite number"),
        ("reward.sources=[{kind: rm, weight: .nan}]", "reward.sources.0.weight: Input should be a finite number"),
        ("task.ramble_rate=0.9", "task: Value error, ramble_rate + verbose_rate + wrong_rate must be <= 1"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as exc:
        load_config("tiny", [override])
    assert needle in str(exc.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  kl_coef: 0.1\n  clip: 0.3\n")
    with pytest.raises(ConfigError, match=r"ppo\.clip: unknown key; allowed: num_cpus, .*kl_coef"):
        load_config(str(path))


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config("huge")


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config("tiny", ["ppo.kl_coef=0.07"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert RunConfig.model_validate(yaml.safe_load(path.read_text())) == cfg
    assert load_config(str(path)) == cfg


def test_every_field_has_a_docstring():
    lines = explain()
    assert len(lines) > 30
    for line in lines:
        key, _, doc = line.partition("\n")
        assert doc.strip(), f"{key} has no docstring"


def test_cli_exits_2_and_names_the_key():
    out = subprocess.run(
        [sys.executable, "-m", "raylhf", "config", "ppo.kl_coeff=0.1"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out
    assert "ppo.kl_coeff" in out.stderr


def test_exponent_floats_without_a_dot(tmp_path):
    # YAML 1.1 reads `1e-4` as a string; a config means a float.
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  lr: 1e-4\n")
    assert load_config(str(path), ["ppo.kl_coef=2E-2"]).sft.lr == 1e-4
    assert load_config(str(path), ["ppo.kl_coef=2E-2"]).ppo.kl_coef == 0.02


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["ppo.buffer_size=63"], "ppo.buffer_size: must be at least one learner batch (ppo.batch_size = 64)"),
        (["ppo.batch_size=8", "ppo.prompts_per_request=16", "generation.n=2", "ppo.buffer_size=31"],
         "ppo.prompts_per_request x generation.n = 16 x 2 = 32) (got 31)"),
        (["ray.num_cpus=1"], "ray.num_cpus: the PPO actors need 2 CPUs (generation.num_generators x "
                             "generation.num_cpus + reward.num_actors x reward.num_cpus + ppo.num_cpus = "
                             "1 x 0.5 + 1 x 0.5 + 1) but the local Ray has 1 (ray.num_cpus)"),
        (["reward.num_actors=2"], "the PPO actors need 2.5 CPUs"),
    ],
)
def test_sections_that_do_not_fit_together(monkeypatch, overrides, needle):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with pytest.raises(ConfigError) as exc:
        load_config("tiny", overrides)
    assert needle in str(exc.value)


def test_buffer_of_exactly_one_batch_and_one_call_is_enough():
    cfg = load_config("tiny", ["ppo.batch_size=32", "ppo.prompts_per_request=8", "generation.n=4", "ppo.buffer_size=32"])
    assert cfg.ppo.buffer_size == 32


def test_presets_fit_a_two_core_machine(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    for preset in preset_names():
        load_config(preset)


def test_cluster_runs_are_not_bounded_by_this_machine(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with pytest.raises(ConfigError, match="this machine's CPU count, ray.num_cpus unset"):
        load_config("tiny", ["generation.num_generators=8"])
    assert load_config("tiny", ["generation.num_generators=8", "ray.address=auto"]).generation.num_generators == 8
    assert load_config("tiny", ["generation.num_generators=8", "ray.num_cpus=8"]).ray.num_cpus == 8


def test_in_flight_weight_updates_need_the_vllm_engine():
    assert RunConfig().generation.weight_updates == "between_calls"
    assert load_config("tiny", ["generation.weight_updates=in_flight"]).generation.weight_updates == "in_flight"
    with pytest.raises(ConfigError, match=r"generation\.weight_updates: .*needs `generation\.engine: vllm`"):
        load_config("tiny", ["generation.engine=hf", "generation.weight_updates=in_flight"])
    with pytest.raises(ConfigError, match=r"generation\.weight_updates: .*'between_calls' or 'in_flight'"):
        load_config("tiny", ["generation.weight_updates=sometimes"])
