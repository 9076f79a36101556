import numpy as np
import pytest
import torch

from raylhf.contracts.snapshot import build_snapshot, snapshot_tensors


def test_snapshot_round_trip_mixed_dtypes():
    tensors = {
        "a": torch.randn(3, 4),
        "b": torch.randn(5).to(torch.bfloat16),
        "c": torch.randn(2, 2),
        "d": torch.randn(7).to(torch.bfloat16),
    }
    snap = build_snapshot(tensors.items(), version=3)
    assert snap.version == 3
    assert set(snap.buffers) == {"float32", "bfloat16"}
    assert snap.buffers["bfloat16"].dtype == np.uint16 and snap.buffers["bfloat16"].size == 12
    assert snap.nbytes == (12 + 4) * 4 + 12 * 2
    back = dict(snapshot_tensors(snap))
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)


def test_snapshot_is_a_copy_and_views_share_the_buffer():
    w = torch.zeros(4)
    snap = build_snapshot([("w", w)], version=0)
    w += 1  # the learner keeps training: the published snapshot must not change
    (name, view), = snapshot_tensors(snap)
    assert torch.equal(view, torch.zeros(4))
    assert view.data_ptr() == torch.from_numpy(snap.buffers["float32"]).data_ptr()


def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match="duplicate tensor name 'x'"):
        build_snapshot([("x", torch.zeros(1)), ("x", torch.zeros(1))], version=0)
