"""HostStager: an asynchronous save copies its state into the host buffers the previous save of the same
file used, so only the first save allocates; the copy holds this save's values, tied tensors stay tied."""
from __future__ import annotations

from collections import OrderedDict

import torch

from trainer.checkpoint.async_writer import HostStager


def state(scale: float) -> dict:
    weight = torch.full((4, 3), scale)
    sd = OrderedDict(embed=weight, head=weight, bias=torch.arange(3.0) * scale)  # head is tied to embed
    sd._metadata = {"": {"version": 1}}
    return {"state_dict": sd, "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(5) * scale}}}], "global_step": int(scale)}


def buffers(staged: dict) -> list[int]:
    sd = staged["state_dict"]
    return [sd["embed"].data_ptr(), sd["bias"].data_ptr(), staged["optimizer_states"][0]["state"][0]["exp_avg"].data_ptr()]


def test_the_second_save_reuses_the_first_saves_buffers_and_holds_its_own_values():
    stager = HostStager()
    live = state(1.0)
    first = stager.stage(live, "state.ckpt")
    assert first["state_dict"]["embed"].data_ptr() != live["state_dict"]["embed"].data_ptr()  # a copy, not the live tensor
    first_ptrs = buffers(first)
    second = stager.stage(state(2.0), "state.ckpt")
    assert buffers(second) == first_ptrs
    assert torch.equal(second["state_dict"]["bias"], torch.arange(3.0) * 2) and second["global_step"] == 2
    assert second["state_dict"]["head"] is second["state_dict"]["embed"]  # tied weights stay one tensor
    assert second["state_dict"]._metadata == {"": {"version": 1}}
    assert torch.equal(second["optimizer_states"][0]["state"][0]["exp_avg"], torch.full((5,), 2.0))


def test_other_files_and_changed_shapes_get_buffers_of_their_own():
    stager = HostStager()
    a = stager.stage(state(1.0), "model_states.pt")
    b = stager.stage(state(1.0), "optim_states.pt")
    assert not set(buffers(a)) & set(buffers(b))  # each file its own buffers: both are written in one save
    grown = state(3.0)
    grown["state_dict"]["bias"] = torch.ones(7)
    c = stager.stage(grown, "model_states.pt")
    assert buffers(c)[0] == buffers(a)[0] and buffers(c)[1] != buffers(a)[1]
    assert torch.equal(c["state_dict"]["bias"], torch.ones(7))
