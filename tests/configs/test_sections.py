"""The sections as split into `raylhf.configs.sections`: the names `schema` still offers, the output order, and
the placement block the generator, scorer and learner sections share."""

import pytest

import raylhf.configs.schema as schema
from raylhf.configs.loader import ConfigError, explain, load_config
from raylhf.configs.schema import RunConfig

PLACED = ["generation", "reward", "ppo"]


def test_schema_still_offers_every_section():
    # Components import their section from `schema`; each name of `__all__` must resolve there.
    for name in schema.__all__:
        assert isinstance(getattr(schema, name), type), name
    # The module docstring lists them for readers; keep the two in step.
    for name in schema.__all__:
        if name.endswith("Config") and name != "RunConfig":
            assert name in schema.__doc__, name


def test_explain_goes_section_by_section():
    keys = [line.partition(" = ")[0] for line in explain()]
    runs = []  # top-level sections in the order their keys come, one entry per unbroken run of keys
    for key in keys:
        if "." in key and (not runs or runs[-1] != key.split(".")[0]):
            runs.append(key.split(".")[0])
    nested = [name for name, field in RunConfig.model_fields.items() if isinstance(field.default, schema.Section)]
    assert runs == nested, "a section's keys are split up or out of schema order"


def test_explain_shows_the_default_of_each_place():
    lines = {line.partition(" = ")[0]: line.partition(" = ")[2].split("\n")[0] for line in explain()}
    assert lines["supervision.scorer.call_timeout_s"] == "120.0"
    assert lines["supervision.generator.call_timeout_s"] == "None"
    assert lines["ppo.num_cpus"] == "1.0" and lines["generation.num_cpus"] == "0.5"


def test_placement_defaults_per_kind():
    cfg = RunConfig()
    assert (cfg.generation.num_cpus, cfg.reward.num_cpus, cfg.ppo.num_cpus) == (0.5, 0.5, 1.0)
    for section in PLACED:
        placed = getattr(cfg, section)
        assert isinstance(placed, schema.Placement)
        assert (placed.num_gpus, placed.resources, placed.cpus) == (0.0, {}, [])


def test_placement_keys_are_set_per_section():
    cfg = load_config("tiny", ["generation.cpus=[0, 1]", "reward.resources={scorer_node: 1}", "ppo.num_gpus=1"])
    assert cfg.generation.cpus == [0, 1] and cfg.reward.resources == {"scorer_node": 1.0} and cfg.ppo.num_gpus == 1.0
    assert cfg.reward.cpus == [0] and cfg.ppo.cpus == [1]  # the tiny preset's pinning, untouched


@pytest.mark.parametrize("section", PLACED)
@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("cpus", "[-1]", "cpus: Value error, expected distinct CPU ids >= 0 (as `taskset -c` numbers them), got [-1]"),
        ("cpus", "[1, 1]", "cpus: Value error, expected distinct CPU ids >= 0"),
        ("resources", "{CPU: 1}", "resources: Value error, 'CPU' is set by num_cpus / num_gpus, not here"),
        ("resources", "{node_a: 0}", "resources: Value error, 'node_a': amount must be > 0, got 0"),
        ("num_cpus", "0", "num_cpus: Input should be greater than 0"),
        ("num_gpus", "-1", "num_gpus: Input should be greater than or equal to 0"),
    ],
)
def test_placement_is_validated_alike_in_each_section(section, key, value, needle):
    with pytest.raises(ConfigError) as exc:
        load_config("tiny", [f"{section}.{key}={value}"])
    assert f"{section}.{needle}" in str(exc.value)
