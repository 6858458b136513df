"""How a model's networks compute: mixed precision, memory format, compilation.

These are the accelerator options of ``train.precision``, ``train.channels_last`` and
``train.compile`` (and of ``mvae-dist bench step``). Only the unimodal encoders and decoders
change: under ``precision="bf16"`` they run in ``torch.autocast(bfloat16)`` and hand float32
parameters to the distributions (``Modality.encode`` / ``decode``), so posteriors, likelihoods,
log-sum-exps, the estimators and the contrastive pair kernels stay in float32 and the
parameters and optimiser state stay float32 (autocast casts per op; no loss scaling is needed
for bf16). JMVAE's joint encoder is not autocast.

``channels_last`` stores the convolution weights (and the image inputs of the encoders)
channels-last, the layout cuDNN's tensor-core kernels prefer. ``compile`` compiles each
encoder and decoder in place (``nn.Module.compile``): parameter names, state dicts and
checkpoints are unchanged, and the sampling / objective code around them stays eager.
On the 2-core CPU machine (AVX-512 BF16) bf16 and compile made the step 0.71-0.94x as long
and channels_last 0.98-1.05x, but bf16 did not shorten the time to the demo's targets
(docs/benchmarks.md, "Accelerator options"); the defaults stay fp32, contiguous, eager.
"""

from __future__ import annotations

import torch

from ..config import PRECISIONS  # the one list of values; config checks train.precision too
from .base import MultimodalVAE


def configure_compute(model: MultimodalVAE, *, precision: str = "fp32", channels_last: bool = False,
                      compile: bool = False) -> MultimodalVAE:
    """Set how ``model``'s networks compute (in place; returns the model). Call after moving
    the model to its device and before wrapping it in DistributedDataParallel."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if channels_last:
        model.to(memory_format=torch.channels_last)  # 4-D parameters (convolution weights) only
    for m in model.modalities:
        m.compute_dtype = torch.bfloat16 if precision == "bf16" else None
        m.channels_last = channels_last
        if compile:
            m.encoder.compile()
            m.decoder.compile()
    return model
