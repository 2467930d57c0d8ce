"""The optimizer-state file format (colm_core.optimizer_state): a state saved and loaded back continues
the same optimisation, bitwise, and the tensors that share its file come back apart from it."""

from __future__ import annotations

import json

import torch

from colm_core.optimizer_state import load_optimizer_state, save_optimizer_state


def stepped_adamw(steps: range, state: dict | None = None) -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    for step in steps:  # each step's batch from its own seed
        torch.manual_seed(100 + step)
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def test_a_saved_adamw_state_continues_bitwise_and_keeps_extra_tensors_apart(tmp_path):
    straight, _ = stepped_adamw(range(4))
    model, optimizer = stepped_adamw(range(2))
    extra = {"rng::torch": torch.get_rng_state(), "model::weight": model.weight.detach().clone()}
    groups = save_optimizer_state(tmp_path / "optimizer.safetensors", optimizer.state_dict(), extra=extra)
    groups = json.loads(json.dumps(groups))  # as the caller's JSON file keeps them
    state, loaded_extra = load_optimizer_state(tmp_path / "optimizer.safetensors", groups)
    assert sorted(loaded_extra) == sorted(extra) and torch.equal(loaded_extra["model::weight"], model.weight)
    assert set(state["state"]) == {0, 1} and state["state"][0]["step"].ndim == 0  # keyed as the groups name them
    resumed, _ = stepped_adamw(range(2, 4), {"model": model.state_dict(), "optimizer": state})
    assert torch.equal(resumed.weight, straight.weight) and torch.equal(resumed.bias, straight.bias)
