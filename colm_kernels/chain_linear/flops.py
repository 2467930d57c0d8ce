"""FLOPs of the chain linear's custom ops for torch.utils.flop_counter: 2 per multiply-add of the
lower-triangular blocks only.

Registered when torch.utils.flop_counter is first imported, not when the ops are: importing the
counter imports triton (about 75 MiB and 0.2 s), which no colm command that counts nothing should
pay for, while anything that does count (FlopCounterMode, in any order of imports) still sees
through the ops.
"""

import importlib.abc
import importlib.util
import math
import sys

COUNTER = "torch.utils.flop_counter"


def block_flops(rows_shape, weight_shapes, needed=None) -> int:
    rows = math.prod(rows_shape[:-1])
    return 2 * rows * sum(o * k for (o, k), need in zip(weight_shapes, needed or [True] * len(weight_shapes)) if need)


def register(counter) -> None:
    import torch

    @counter.register_flop_formula(torch.ops.colm.chain_linear)
    def _(x_shape, weight_shapes, backend, out_shape=None, **kwargs) -> int:
        return block_flops(x_shape, weight_shapes)

    @counter.register_flop_formula(torch.ops.colm.chain_linear_grad_input)
    def _(dy_shape, weight_shapes, width, backend, out_shape=None, **kwargs) -> int:
        return block_flops(dy_shape, weight_shapes)

    @counter.register_flop_formula(torch.ops.colm.chain_linear_grad_weights)
    def _(dy_shape, x_shape, weight_shapes, needed, backend, out_shape=None, **kwargs) -> int:
        return block_flops(dy_shape, weight_shapes, needed)


class RegisterAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the counter module as usual, then registers colm's formulas once it has executed."""

    def find_spec(self, name, path, target=None):
        if name != COUNTER:
            return None
        sys.meta_path.remove(self)  # one import to watch; the real finders locate the module
        spec = importlib.util.find_spec(name)
        self.loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        register(module)


def register_when_counted() -> None:
    if COUNTER in sys.modules:
        register(sys.modules[COUNTER])
    else:
        sys.meta_path.insert(0, RegisterAfterImport())
