"""Starting or joining Ray for a run."""

from __future__ import annotations

import logging

from raylhf.configs.schema import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig) -> None:
    """Join `cfg.address` if set, else start a local embedded Ray. The dashboard stays on loopback
    unless configured otherwise; no-op when Ray is already initialised (tests, notebooks)."""
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, configure_logging=False)
        log.info("joined Ray cluster at %s", cfg.address)
        return
    ray.init(
        address="local",  # a fresh embedded Ray, never whichever cluster happens to be running here
        num_cpus=cfg.num_cpus,
        resources=dict(cfg.resources) or None,
        include_dashboard=cfg.include_dashboard,
        dashboard_host=cfg.dashboard_host,
        configure_logging=False,
        log_to_driver=True,
    )
