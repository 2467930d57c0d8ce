"""The optimizer-state file format: an optimizer's state_dict as one safetensors file, no pickle.

The per-parameter tensors are named PARAM::SLOT (`model.embed.weight::exp_avg`, or `0::step` for a
plain optimizer's indices); a 0-d slot (AdamW's step) is stored with shape [1]. The param groups
(learning rate, betas, which parameters) are plain values: the caller keeps them in its JSON file,
and gives them back to read the tensors. Other tensors can share the file (RNG states, LoRA
weights) under names whose part before `::` names no parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SEPARATOR = "::"


def save_optimizer_state(
    path: Path,
    state_dict: dict,
    extra: Mapping[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
) -> list[dict]:
    """Write the state_dict's tensors, and `extra` tensors, to the safetensors file `path`; return its
    param groups as JSON values, for the caller's JSON file (load_optimizer_state takes them back)."""
    tensors = {
        f"{param}{SEPARATOR}{slot}": (value.reshape(1) if value.ndim == 0 else value)
        for param, per_param in state_dict["state"].items()
        for slot, value in per_param.items()
    }
    clash = tensors.keys() & dict(extra or {}).keys()
    if clash:
        raise ValueError(f"extra tensor {sorted(clash)[0]!r} has the name of an optimizer state tensor")
    save_file(tensors | dict(extra or {}), path, metadata=metadata)
    return [
        {k: v for k, v in group.items() if k != "params"} | {"params": list(group["params"])}
        for group in state_dict["param_groups"]
    ]


def load_optimizer_state(path: Path, param_groups: list[dict]) -> tuple[dict, dict[str, torch.Tensor]]:
    """The state_dict saved at `path` with the param groups saved beside it, keyed as those groups name
    the parameters; and the file's other tensors (extra) by name."""
    params = {str(p): p for group in param_groups for p in group["params"]}
    state: dict = {}
    extra: dict[str, torch.Tensor] = {}
    for name, value in load_file(path).items():
        param, _, slot = name.partition(SEPARATOR)
        if param in params:
            state.setdefault(params[param], {})[slot] = value.reshape(()) if slot == "step" else value
        else:
            extra[name] = value
    return {"state": state, "param_groups": param_groups}, extra
