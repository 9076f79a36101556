"""WeightSnapshot: a model's parameters as one flat buffer per dtype, for the Ray object store.

The learner builds one snapshot per published version and `ray.put`s it once; every generator
`ray.get`s the same object. numpy arrays come out of the object store zero-copy (≈ 4 ms for
256 MB here) while torch tensors are copied (≈ 1.9 s), hence numpy buffers plus specs, and
bf16 carried as raw 16-bit integers (numpy has no bfloat16).

torch is imported lazily so that importing the contracts stays cheap.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

# torch dtype name -> numpy storage dtype of its flat buffer
_STORAGE = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,  # raw bits; viewed back as torch.bfloat16
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str  # parameter name as in the HF checkpoint
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "bfloat16"
    offset: int  # first element of this tensor in buffers[dtype]
    numel: int


@dataclass(frozen=True)
class WeightSnapshot:
    version: int
    buffers: dict[str, np.ndarray]  # dtype name -> flat 1-D array [sum of numel of that dtype]
    specs: tuple[TensorSpec, ...]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers.values())

    def signature(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype) of every tensor, to compare against a model before applying."""
        return [(s.name, s.shape, s.dtype) for s in self.specs]


def _dtype_name(t: "torch.Tensor") -> str:
    return str(t.dtype).removeprefix("torch.")


def build_snapshot(named_tensors: Iterable[tuple[str, "torch.Tensor"]], version: int) -> WeightSnapshot:
    """Pack tensors (e.g. `model.state_dict().items()`) into one contiguous buffer per dtype.

    One concatenation per dtype, i.e. one copy of the weights.
    """
    import torch

    by_dtype: dict[str, list[torch.Tensor]] = {}
    specs: list[TensorSpec] = []
    offsets: dict[str, int] = {}
    seen: set[str] = set()
    for name, tensor in named_tensors:
        if name in seen:
            raise ValueError(f"duplicate tensor name {name!r} in snapshot")
        seen.add(name)
        dtype = _dtype_name(tensor)
        if dtype not in _STORAGE:
            raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be carried in a WeightSnapshot")
        flat = tensor.detach().reshape(-1)
        offset = offsets.get(dtype, 0)
        specs.append(TensorSpec(name, tuple(tensor.shape), dtype, offset, flat.numel()))
        offsets[dtype] = offset + flat.numel()
        by_dtype.setdefault(dtype, []).append(flat)
    buffers: dict[str, np.ndarray] = {}
    for dtype, parts in by_dtype.items():
        flat = torch.cat([p.to("cpu") for p in parts]) if len(parts) > 1 else parts[0].to("cpu").clone()
        if dtype == "bfloat16":
            flat = flat.view(torch.int16)
        buffers[dtype] = flat.numpy().view(_STORAGE[dtype])
    return WeightSnapshot(version=version, buffers=buffers, specs=tuple(specs))


def snapshot_tensors(snapshot: WeightSnapshot) -> Iterator[tuple[str, "torch.Tensor"]]:
    """Yield (name, tensor) views into the snapshot's buffers, without copying.

    Buffers that come out of the object store are read-only; the views must not be written to.
    """
    import torch

    bases: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for dtype, buf in snapshot.buffers.items():
            base = torch.from_numpy(buf)
            if dtype == "bfloat16":
                base = base.view(torch.bfloat16)
            bases[dtype] = base
    for spec in snapshot.specs:
        yield spec.name, bases[spec.dtype][spec.offset : spec.offset + spec.numel].view(spec.shape)


class SnapshotMismatchError(ValueError):
    """A snapshot whose tensors do not match the model it is applied to; nothing was applied."""


def named_checkpoint_tensors(model: "torch.nn.Module") -> Iterator[tuple[str, "torch.Tensor"]]:
    """A model's state dict with tied tensors once (under their first name), as `save_pretrained` writes it.

    `state_dict()` lists a tied tensor under every name (e.g. `lm_head.weight` and
    `model.embed_tokens.weight`); an engine loads it once, so a snapshot carries it once.
    """
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        yield name, tensor.detach()


def signature_mismatches(
    snapshot: WeightSnapshot, expected: Iterable[tuple[str, tuple[int, ...], str]]
) -> list[str]:
    """Human-readable differences between a snapshot and the (name, shape, dtype) a model expects.

    Empty when they match; missing and unexpected names first, then shape and dtype differences.
    """
    want = {name: (tuple(shape), dtype) for name, shape, dtype in expected}
    have = {s.name: (s.shape, s.dtype) for s in snapshot.specs}
    problems = [f"missing {name}" for name in want if name not in have]
    problems += [f"unexpected {name}" for name in have if name not in want]
    for name, (shape, dtype) in have.items():
        if name not in want:
            continue
        want_shape, want_dtype = want[name]
        if shape != want_shape:
            problems.append(f"{name}: shape {list(shape)}, expected {list(want_shape)}")
        if dtype != want_dtype:
            problems.append(f"{name}: dtype {dtype}, expected {want_dtype}")
    return problems


def check_signature(snapshot: WeightSnapshot, expected: Iterable[tuple[str, tuple[int, ...], str]], where: str) -> None:
    """Raise SnapshotMismatchError naming the first differences, or return if the snapshot fits."""
    problems = signature_mismatches(snapshot, expected)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise SnapshotMismatchError(
            f"weight snapshot v{snapshot.version} does not match {where}: {shown}. The previous weights are kept."
        )


def tensor_checksum(tensor: "torch.Tensor") -> str:
    """Exact digest of a tensor's dtype, shape and values (-0.0 counted as 0.0), for comparing copies."""
    import hashlib

    import torch

    t = tensor.detach().to("cpu").contiguous()
    if t.is_floating_point():
        t = t + 0.0  # one bit pattern for zero: -0.0 + 0.0 == +0.0
    raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{_dtype_name(t)}{tuple(t.shape)}".encode())
    h.update(raw.numpy().tobytes())
    return h.hexdigest()


def snapshot_checksums(snapshot: WeightSnapshot) -> dict[str, str]:
    """`tensor_checksum` of every tensor of a snapshot, by name."""
    return {name: tensor_checksum(t) for name, t in snapshot_tensors(snapshot)}
