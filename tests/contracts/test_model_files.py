"""Checkpoint directories packed for actors on other nodes, and unpacked there."""

import pytest

from raylhf.contracts.model_files import ModelFiles, local_dir, pack_dir, unpack_into


def test_pack_and_unpack_round_trip(tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "weights.bin").write_bytes(bytes(range(256)))
    files = pack_dir(src)
    assert files == {"config.json": b'{"a": 1}', "sub/weights.bin": bytes(range(256))}
    out = unpack_into(files, tmp_path / "copy")
    assert pack_dir(out) == files


def test_unpack_refuses_paths_outside_the_target(tmp_path):
    for rel in ("../evil", "/etc/evil", "a/../../evil"):
        with pytest.raises(ValueError, match="outside"):
            unpack_into({rel: b"x"}, tmp_path / "t")
    assert not (tmp_path / "evil").exists()


def test_plain_paths_and_unpacked_files_need_no_transfer(tmp_path):
    assert local_dir(None) is None
    assert local_dir(tmp_path) == str(tmp_path)
    # Not packed (a one-node cluster): every actor reads the driver's path itself.
    assert local_dir(ModelFiles(str(tmp_path), node_id="any", packed=None)) == str(tmp_path)
    assert str(ModelFiles("/runs/demo/models/sft", "n")) == "/runs/demo/models/sft"  # errors name the user's path
