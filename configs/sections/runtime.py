"""Where and how the run is hosted: the Ray cluster (`ray`) and the live metrics endpoint (`metrics`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from raylhf.configs.sections.base import Section, custom_resources


class RayConfig(Section):
    address: str | None = None
    """Ray cluster address; unset starts a local embedded Ray."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs the local Ray may use (default: all)."""
    include_dashboard: bool = False
    """Start the Ray dashboard (bound to `dashboard_host`)."""
    dashboard_host: str = "127.0.0.1"
    """Interface the dashboard binds to; 127.0.0.1 keeps it off the network."""
    resources: dict[str, float] = {}
    """Custom resources the local embedded Ray advertises (ignored when joining `address`), e.g. to try a
    placement (`generation.resources`, ...) on one machine."""
    _resources_valid = field_validator("resources")(custom_resources)


class MetricsConfig(Section):
    enabled: bool = False
    """Serve live Prometheus metrics of the PPO stage (throughput, phase seconds, queue depths, staleness,
    faults, learner figures) over HTTP while it runs."""
    host: str = "127.0.0.1"
    """Interface the metrics endpoint binds to; 127.0.0.1 keeps it off the network (`0.0.0.0`: every interface)."""
    port: int = Field(0, ge=0, le=65535)
    """TCP port of the metrics endpoint; 0 picks a free one. The URL is logged and written to
    `<run>/metrics_endpoint.txt` while the endpoint is up."""
    linger_s: float = Field(0.0, ge=0.0)
    """Seconds the endpoint stays up after the stage finished, so a scraper reads the final values."""
