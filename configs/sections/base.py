"""What every section shares: strict validation (`Section`) and the placement block of the sections whose
actors Ray places (`Placement`: generators, scorers, the learner)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Ray's own names for what `num_cpus` / `num_gpus` / `memory` already reserve.
_RAY_BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


def cpu_ids(value: list[int]) -> list[int]:
    if any(c < 0 for c in value) or len(set(value)) != len(value):
        raise ValueError(f"expected distinct CPU ids >= 0 (as `taskset -c` numbers them), got {value}")
    return value


def custom_resources(value: dict[str, float]) -> dict[str, float]:
    for name, amount in value.items():
        if name in _RAY_BUILTIN_RESOURCES:
            raise ValueError(f"{name!r} is set by num_cpus / num_gpus, not here")
        if amount <= 0:
            raise ValueError(f"{name!r}: amount must be > 0, got {amount}")
    return value


class Section(BaseModel):
    # allow_inf_nan=False: a NaN or infinite number in any field is a config error, never a silent poison.
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True, frozen=True,
                              allow_inf_nan=False)


class Placement(Section):
    """Where each actor of a section runs and what Ray reserves for it. Subclasses keep these keys
    (`generation.num_cpus`, `reward.cpus`, `ppo.resources`, ...) and may re-declare a default."""

    num_cpus: float = Field(0.5, gt=0.0)
    """CPUs Ray reserves for each actor of this section (fractions allowed); its torch thread count follows
    (whole CPUs, at least one thread)."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs for each actor of this section; 0 runs it on CPU."""
    resources: dict[str, float] = {}
    """Custom Ray resources each actor of this section requires, e.g. `{big_node: 1}`: pins the actors to the
    nodes started with that resource (`ray start --resources='{"big_node": 4}'`)."""
    cpus: list[int] = []
    """CPU ids (Linux numbering) each actor of this section is pinned to, every thread of its process; empty:
    not pinned. Ray's `num_cpus` only places actors, the OS still runs any process on any core; on a machine
    with as many cores as busy actors, pinning generators and scorers to one core and the learner to another
    keeps them from slowing each other's steps."""

    _resources_valid = field_validator("resources")(custom_resources)
    _cpus_valid = field_validator("cpus")(cpu_ids)
