"""Whether bfloat16 autocast can run at speed on this CPU: only where oneDNN has bf16 kernels."""

from __future__ import annotations

import torch

# measured (experiments/benchmarks): vgg8_gap_slim's training step on an AVX2-only AMD
# EPYC (Zen 3) ran at 142 img/s in float32 and 9 img/s under bf16 autocast
SLOW_BF16 = ("this CPU ({capability}) has no bfloat16 kernels in oneDNN (they need AVX-512 or "
             "AMX), so bf16 autocast runs in slow fallback code: measured 16x slower than float32 "
             "on an AVX2-only AMD EPYC")


def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU: it needs AVX-512 (with AVX512-BF16 or
    AMX they are faster than float32; without, somewhat slower). Where it has none, bf16
    autocast is an order of magnitude slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN's query
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def slow_bf16_reason() -> str | None:
    """Why bf16 autocast would be slow on this CPU, or None where it is not."""
    if cpu_has_bf16_kernels():
        return None
    return SLOW_BF16.format(capability=torch.backends.cpu.get_cpu_capability())
