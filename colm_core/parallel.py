"""Everything about running on several processes, kept apart from the model and the training loop.

`setup(strategy)` returns a Runtime: a single-process one, or a distributed one when the process
was started by torchrun (WORLD_SIZE > 1). The training loop only talks to the Runtime: wrap the
loss module (DDP, or FSDP2 `fully_shard` over a 1-D device mesh), skip gradient sync on
accumulation micro-steps, reduce metrics, gather the full model and optimizer state for the
single-directory safetensors checkpoint (rank 0 writes it), and tear down cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from colm_core.errors import WORKER_ERRORS_ENV, ColmError, OptionError
from colm_core.options import STRATEGIES

FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)


class Runtime:
    """One process: wrapping and reductions are the identity."""

    rank, world_size = 0, 1

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def gradient_sync(self, module, enabled: bool):
        """Context for one accumulation micro-step; gradients are only synchronised on the last one."""
        return contextlib.nullcontext()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def any(self, flag: bool) -> bool:
        return flag

    def full_state(self, module, optimizer) -> tuple[dict, dict]:
        """(model, optimizer) full state dicts on CPU, keyed by parameter name; empty on ranks > 0."""
        return (
            get_model_state_dict(module, options=FULL_STATE),
            get_optimizer_state_dict(module, optimizer, options=FULL_STATE),
        )

    def load_optimizer_state(self, module, optimizer, state: dict) -> None:
        """Restore a full optimizer state dict (as full_state gave it) into the possibly sharded optimizer."""
        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def barrier(self) -> None:
        pass

    def close(self, clean: bool) -> None:
        pass


class DistributedRuntime(Runtime):
    def __init__(self, strategy: str):
        self.strategy = strategy
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        super().__init__(torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu"))

    def wrap(self, module):
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        for layer in module.model.layers:  # one all-gather per transformer block
            fully_shard(layer, mesh=mesh)
        return fully_shard(module, mesh=mesh)  # the root: embeddings, final norm, LM head

    def gradient_sync(self, module, enabled: bool):
        if self.strategy == "ddp":
            return contextlib.nullcontext() if enabled else module.no_sync()
        module.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def sum(self, t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    def any(self, flag):
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item())

    def barrier(self):
        dist.barrier()

    def close(self, clean):
        if clean:  # every rank must get here before the group goes; FSDP2 on gloo aborts otherwise
            dist.barrier()
        dist.destroy_process_group()


def setup(strategy: str, device: str | None = None) -> Runtime:
    if strategy not in STRATEGIES:
        raise OptionError(
            "{strategy} {value}: unknown strategy; choose one of {choices}",
            value=strategy,
            choices=", ".join(STRATEGIES),
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return DistributedRuntime(strategy)
    return Runtime(parse_device(device))


def parse_device(name: str | None) -> torch.device:
    """A --device value (cpu, cuda, cuda:1, ...; default: cuda if available) that exists on this machine."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise OptionError("{device} {value!r}: not a device; give cpu, cuda or cuda:N", value=name) from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ColmError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "give another one, or --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise OptionError("{device} {value}: colm runs on cpu or cuda", value=name)
    return device


def launch(nproc: int, argv: list[str]) -> int:
    """`colm train --nproc N ...`: rerun the same command under torchrun on this machine; the workers' exit code.

    torchrun's own launcher runs in this process with its logging off, so a failure prints no
    launcher traceback; each worker leaves its final line in a file (colm_cli.app.report), and the
    line of the first worker that failed is printed once."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise OptionError("{nproc} {value}: give a positive number of processes", value=nproc)
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "colm_cli", *argv])
    logging.disable(logging.CRITICAL)  # torchrun's notices and failure reports: this process only launches
    with tempfile.TemporaryDirectory(prefix="colm-workers-") as errors:
        os.environ[WORKER_ERRORS_ENV] = errors
        try:
            run(args)
            return 0
        except ChildFailedError as e:
            rank, failure = e.get_first_failure()
            code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode  # killed by a signal
        except SignalException:  # this launcher was interrupted; the workers were stopped too
            rank, code = None, 130
        finally:
            del os.environ[WORKER_ERRORS_ENV]
        lines = {int(f.name): f.read_text() for f in Path(errors).iterdir()}
    line = lines.get(rank) or next((lines[r] for r in sorted(lines)), None)
    if line is None:
        line = "colm: interrupted" if rank is None else f"colm: error: training process {rank} exited with code {code}"
    print(line.rstrip(), file=sys.stderr, flush=True)
    return code
