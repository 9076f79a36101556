"""vLLM worker extension: apply a WeightSnapshot in place and read the engine's weights back.

vLLM mixes this class into its worker when the engine is built with
`LLM(worker_extension_cls="raylhf.actors.worker_extension.WeightSyncExtension")`; the engine calls its
methods with `llm.collective_rpc(name, args=...)`. With the in-process engine
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`) the call is a plain function call, so a snapshot read zero-copy
out of the object store reaches the worker without another copy.

Why a read-back by probing: on the CPU backend vLLM repacks every linear layer's weight into a
oneDNN handle after loading and leaves `weight` as an empty (0,)-shaped parameter, and it fuses
q/k/v and gate/up into one matrix. The parameters no longer show what the engine computes with.
`read_back` therefore multiplies an identity matrix through each linear layer's own GEMM
(`quant_method.apply`, the call the forward pass makes): row i of `I @ W^T` is column i of W, and
with exact zeros elsewhere the result is bit-exact in fp32/bf16/fp16. Fused matrices are split
back into their HF tensors by the layer's `output_sizes`. Embedding tables and norm weights are
used as stored, so they are read directly. Layers whose HF layout differs from vLLM's (GPT-2's
Conv1D, stored transposed) are turned back by the model's own loading hook. The cost is
O(in_features² · out_features) per layer: a test and diagnostics tool for small models, not part of a
weight update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from raylhf.contracts.snapshot import WeightSnapshot

# Rows of the identity pushed through a layer at once (bounds the probe's memory).
_PROBE_ROWS = 1024


class WeightSyncExtension:
    """Methods run inside the vLLM worker (`self` is the worker; `self.model_runner` holds the model)."""

    def apply_snapshot(self, snapshot: "WeightSnapshot") -> None:
        """Load every tensor of the snapshot (HF names) into the running model, in place.

        The caller has checked names, shapes and dtypes against the model. vLLM's in-place reload
        maps HF names onto its fused parameters and redoes the post-load processing (repacking).
        """
        from raylhf.contracts.snapshot import snapshot_tensors

        self.reload_weights(weights_iterator=snapshot_tensors(snapshot))
        _refresh_tied_layers(self.model_runner.get_model())

    def read_back(self) -> dict[str, torch.Tensor]:
        """The weights the engine computes with, under HF checkpoint names (see the module docstring).

        Includes `lm_head.weight` as the matrix the logits are computed with, also when it is tied
        to the input embedding (then it equals `model.embed_tokens.weight`).
        """
        from vllm.model_executor.layers.linear import LinearBase
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

        model = self.model_runner.get_model()
        packed = getattr(model, "packed_modules_mapping", {}) or {}
        out: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for module_name, module in model.named_modules():
                prefix, _, leaf = module_name.rpartition(".")
                if isinstance(module, LinearBase):
                    weight = _probe_linear(module, module.input_size)
                    bias = module.bias.detach().clone() if getattr(module, "bias", None) is not None else None
                    if leaf in packed:
                        names = [f"{prefix}.{p}" if prefix else p for p in packed[leaf]]
                        sizes = list(module.output_sizes)
                        for name, w in zip(names, weight.split(sizes, 0)):
                            out[f"{name}.weight"] = w.contiguous()
                        if bias is not None:
                            for name, b in zip(names, bias.split(sizes, 0)):
                                out[f"{name}.bias"] = b.contiguous()
                    else:
                        out[f"{module_name}.weight"] = weight
                        if bias is not None:
                            out[f"{module_name}.bias"] = bias
                elif isinstance(module, ParallelLMHead):
                    weight = _probe_linear(module, module.embedding_dim)
                    out[f"{module_name}.weight"] = weight[: module.org_vocab_size].contiguous()
                elif isinstance(module, VocabParallelEmbedding):
                    out[f"{module_name}.weight"] = module.weight[: module.org_vocab_size].detach().clone()
                else:
                    for pname, p in module.named_parameters(recurse=False):
                        out[f"{module_name}.{pname}" if module_name else pname] = p.detach().clone()
        return _checkpoint_layout(model, out)

    def weight_checksums(self) -> dict[str, str]:
        """`tensor_checksum` of every tensor of `read_back`, computed in the worker."""
        from raylhf.contracts.snapshot import tensor_checksum

        return {name: tensor_checksum(t) for name, t in self.read_back().items()}

    def weight_signature(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype) of every tensor of `read_back`."""
        return [(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in self.read_back().items()]


def _probe_linear(layer: torch.nn.Module, in_features: int) -> torch.Tensor:
    """W [out, in] of a linear layer, recovered through the layer's own GEMM: (I @ W^T)^T."""
    dtype = next((p.dtype for p in layer.parameters() if p.is_floating_point()), torch.get_default_dtype())
    device = next((p.device for p in layer.parameters()), torch.device("cpu"))
    columns = []
    for start in range(0, in_features, _PROBE_ROWS):
        rows = min(_PROBE_ROWS, in_features - start)
        eye = torch.zeros(rows, in_features, dtype=dtype, device=device)
        eye[:, start : start + rows] = torch.eye(rows, dtype=dtype, device=device)
        columns.append(layer.quant_method.apply(layer, eye, None))  # [rows, out] = W[:, start:start+rows]^T
    return torch.cat(columns, 0).t().contiguous().cpu()


def _checkpoint_layout(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights read back in the layout of the HF checkpoint rather than vLLM's.

    HF's GPT-2 family stores its Conv1D weights [in, out]; vLLM's GPT-2 transposes them to [out, in] while
    loading, in its model's `_transpose_conv1d` hook, which picks them out by name. A transpose is its own
    inverse, so the same hook, applied once, turns the engine's weights back into the checkpoint's.
    """
    hook = next((m._transpose_conv1d for m in model.modules() if callable(getattr(m, "_transpose_conv1d", None))),
                None)
    if hook is None:
        return tensors
    return {name: t.contiguous() for name, t in hook(tensors.items())}


def _refresh_tied_layers(model: torch.nn.Module) -> None:
    """Redo the post-load processing of the layers that share their weight with an earlier layer.

    The in-place reload loads a tied weight through its first owner (the input embedding, which
    holds the checkpoint name) and re-processes that layer only. On the CPU backend the LM head
    keeps its own packed GEMM handle built from the old values: without this, logits would come
    from the previous weights while the embedding lookup used the new ones.
    """
    owners: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        weight = module._parameters.get("weight")
        if weight is not None:
            owners.setdefault(id(weight), []).append(module)
    for modules in owners.values():
        for module in modules[1:]:
            quant_method = getattr(module, "quant_method", None)
            if quant_method is not None:
                quant_method.process_weights_after_loading(module)
