"""Which implementation a kernel call takes: the COLM_KERNELS setting, one backend for every device.

- torch (the default, also on CUDA): per-chain GEMMs and a per-chain norm in plain PyTorch ops. On
  CUDA that is cuBLAS per chain, which brought a training step to 0.87x of transformers' Llama
  where the Triton kernels reached 0.12x (docs/kernels.md), so it stays the default until the
  Triton kernels are measured faster;
- masked: the chain linear as three dense GEMMs on one packed block lower-triangular weight (cuBLAS's
  dense speed on CUDA: the floor for the block-sparse formulations); the norm as with torch;
- triton: the Triton kernels; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 (the tests);
- reference: the obviously-correct dense formulations (debugging, the tests' ground truth).
"""

import importlib.util
import os

import torch

BACKENDS = ("torch", "masked", "triton", "reference")
DEFAULT = "torch"


# Looked up once at import, not behind functools.cache: torch.compile traces every kernel call's
# backend choice, and dynamo does not honour a cache wrapper.
TRITON_FOUND = importlib.util.find_spec("triton") is not None


def selected(device: torch.device) -> str:
    """The backend kernel calls on `device` take; ValueError naming the fix if COLM_KERNELS cannot be used."""
    name = os.environ.get("COLM_KERNELS") or DEFAULT
    if name not in BACKENDS:
        raise ValueError(f"COLM_KERNELS={name!r} is not a kernel backend; set it to one of {', '.join(BACKENDS)}")
    if name == "triton":
        if not TRITON_FOUND:
            raise ValueError("COLM_KERNELS=triton needs the triton package; install it or set COLM_KERNELS=torch")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"COLM_KERNELS=triton runs on CUDA only (on {device.type} only under "
                "TRITON_INTERPRET=1); set COLM_KERNELS=torch"
            )
    return name


def choose(x: torch.Tensor) -> str:
    return selected(x.device)
