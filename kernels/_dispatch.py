"""Which implementation a kernel call takes.

- COLM_KERNELS=reference: the reference everywhere (debugging, ground truth for tests);
- CUDA tensors: Triton, when triton can be imported;
- anything else: the fast PyTorch path.

To run a Triton path on CPU tensors (TRITON_INTERPRET=1, as the tests do), call the
function in its `triton` module directly."""

import functools
import importlib.util
import os

import torch


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def choose(x: torch.Tensor) -> str:
    if os.environ.get("COLM_KERNELS") == "reference":
        return "reference"
    if x.is_cuda and triton_available():
        return "triton"
    return "cpu"
