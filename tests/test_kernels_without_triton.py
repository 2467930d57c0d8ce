"""Everything runs without triton installed (macOS, Windows, ARM Linux: pyproject.toml installs it
only on x86-64 Linux), on the PyTorch path."""

import os
import subprocess
import sys

from tests.conftest import REPO

WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None  # `import triton` now raises ImportError, as where it is not installed

import torch

from colm_core.tokenizer import ByteTokenizer
from colm_kernels._dispatch import TRITON_FOUND
from tests.conftest import tiny_model

assert not TRITON_FOUND
try:
    import colm_kernels.chain_linear.triton
except ImportError:
    pass
else:
    raise AssertionError("triton was importable")
model = tiny_model()
logits = model(torch.randint(0, 97, (2, 5)))
logits.float().sum().backward()
assert logits.shape == (2, 5, 97) and torch.isfinite(logits).all()
assert all(p.grad is not None for p in model.parameters())
assert "triton" not in {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
print("ok")
"""


def test_import_and_forward_without_triton():
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRITON],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
