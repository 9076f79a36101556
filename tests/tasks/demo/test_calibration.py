"""Calibration of the labeler's noise: agreement on the fixed reference set."""

from __future__ import annotations

import pytest

from raylhf.configs.schema import TaskConfig
from raylhf.tasks import demo
from raylhf.tasks.demo import DemoWorld


def test_labeler_calibration(world):
    """Two labelers agree on ~73 % of the fixed reference pairs (InstructGPT 72.6 ± 1.5 %)."""
    agreement = demo.labeler_agreement(world, n_pairs=8000, seed=0)
    assert 0.70 <= agreement["labeler_labeler"] <= 0.76, agreement
    # a labeler agrees more with the noiseless utility than with another labeler
    assert agreement["labeler_labeler"] < agreement["labeler_utility"] < 0.9, agreement
    assert 0.70 <= demo.labeler_agreement(world, n_pairs=8000, seed=10)["labeler_labeler"] <= 0.76
    # the band is a real constraint: no noise or much noise falls outside it
    assert demo.labeler_agreement(world, n_pairs=8000, noise=0.0)["labeler_labeler"] == 1.0
    assert demo.labeler_agreement(world, n_pairs=8000, noise=0.1)["labeler_labeler"] > 0.76
    assert demo.labeler_agreement(world, n_pairs=8000, noise=0.5)["labeler_labeler"] < 0.70
    assert demo.labeler_agreement(world, n_pairs=8000, noise=5.0)["labeler_labeler"] < 0.56
    # the configured noise is what the calibration finds (within sampling error)
    assert demo.calibrate_labeler_noise(world, target=0.726) == pytest.approx(world.config.labeler_noise, rel=0.1)


def test_expected_agreement_matches_the_calibration(world):
    noise = demo.calibrate_labeler_noise(world, target=0.726)
    assert demo.expected_agreement(world, noise) == pytest.approx(0.726, abs=1e-6)
    assert demo.expected_agreement(world, 0.0) == 1.0
    # more noise, less agreement
    agreements = [demo.expected_agreement(world, noise) for noise in (0.1, 0.23, 1.0)]
    assert agreements == sorted(agreements, reverse=True) and len(set(agreements)) == 3


def test_reference_set_is_fixed_and_sft_quality(world):
    pairs = demo.reference_pairs(world, 2000)
    assert pairs == demo.reference_pairs(DemoWorld(TaskConfig()), 2000)
    assert all(a != b for _, a, b in pairs)
    utilities = [world.utility(p, r) for p, a, b in pairs for r in (a, b)]
    assert sum(u > 0.5 for u in utilities) / len(utilities) > 0.85  # mostly correct responses
