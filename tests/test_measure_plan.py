"""Where segments start and the order nodes run in (`rlplace.measure.plan`,
`rlplace.measure.assign.order_by_key`): hand-computed on a two-branch model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlplace.errors import RlplaceError
from rlplace.measure.assign import order_by_key
from rlplace.measure.plan import Message, plan_segments
from rlplace.measure.program import ForwardProgram, export_forward


class TwoBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(4, 4)
        self.right = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.left(x) + self.right(x))


@pytest.fixture(scope="module")
def program() -> ForwardProgram:
    torch.manual_seed(0)
    program = export_forward(TwoBranch(), (torch.randn(3, 4),))
    # t, addmm (left); t_1, addmm_1 (right); add; t_2, addmm_2 (head); x is primals_7
    assert [node.name for node in program.nodes] == ["t", "addmm", "t_1", "addmm_1", "add", "t_2", "addmm_2"]
    return program


def left_on_0(program: ForwardProgram) -> dict[str, int]:
    return {node.name: 0 if program.module_paths.get(node.name) == "left" else 1 for node in program.nodes}


def test_segments_end_before_a_receive_and_after_a_send(program: ForwardProgram) -> None:
    plan = plan_segments(program, left_on_0(program), 2)
    # x lives with its first user (left's addmm, device 0). Device 1 runs t_1, then addmm_1
    # in a segment of its own (it needs x from device 0), then the head from the sum on,
    # which needs left's output: one segment for the right branch would wait for it first.
    assert [(s.device, s.nodes) for s in plan.segments[:-1]] == [(0, ("t", "addmm")), (1, ("t_1",)), (1, ("addmm_1",)), (1, ("add", "t_2", "addmm_2"))]
    assert plan.segments[-1].is_loss and plan.segments[-1].device == 1
    assert plan.messages == (Message("value", "primals_7", 0, 1), Message("value", "addmm", 0, 1), Message("grad", "addmm", 1, 0))
    # left's gradient leaves after the backward of the head's segment, before the right branch's
    assert plan.first_use[("addmm", 1)] == 3


def test_nodes_run_in_the_given_order(program: ForwardProgram) -> None:
    keys = {"t_1": 0.0, "t_2": 0.5, "addmm_1": 1.0, "t": 2.0, "addmm": 3.0, "addmm_2": 5.0}  # add: none, takes max(3, 1)
    order = order_by_key(program, keys)
    assert order == ["t_1", "t_2", "addmm_1", "t", "addmm", "add", "addmm_2"]
    plan = plan_segments(program, left_on_0(program), 2, order)
    # device 1 now starts with the head's transpose; a device's run is not cut by the other's nodes
    assert [(s.device, s.nodes) for s in plan.segments[:-1]] == [(1, ("t_1", "t_2")), (1, ("addmm_1",)), (0, ("t", "addmm")), (1, ("add", "addmm_2"))]


def test_a_bad_order_is_a_clear_error(program: ForwardProgram) -> None:
    names = [node.name for node in program.nodes]
    with pytest.raises(RlplaceError, match="before its input 't'"):
        plan_segments(program, left_on_0(program), 2, ["addmm", "t", *names[2:]])
    with pytest.raises(RlplaceError, match="give every forward node once"):
        plan_segments(program, left_on_0(program), 2, names[:-1])


def test_executor_priority_runs_backward_last_forward_first_and_updates_last() -> None:
    import numpy as np

    from rlplace.graph import OpGraph
    from rlplace.measure.assign import executor_priority

    # Two branches a, b (b computed later), their backward ops listed a first, one op of no
    # class, and an update.
    graph = OpGraph.build(
        [
            {"name": "x", "kind": "input"},
            {"name": "fa", "kind": "matmul", "flops": 1e6, "coloc": "a"},
            {"name": "fb", "kind": "matmul", "flops": 1e6, "coloc": "b"},
            {"name": "ga", "kind": "matmul", "flops": 1e6, "is_backward": True, "coloc": "a"},
            {"name": "gb", "kind": "matmul", "flops": 1e6, "is_backward": True, "coloc": "b"},
            {"name": "gx", "kind": "elementwise", "bytes_accessed": 1e3, "is_backward": True},
            {"name": "adam", "kind": "optimizer", "bytes_accessed": 1e3, "is_backward": True, "coloc": "a"},
        ],
        [{"src": "x", "dst": "fa"}, {"src": "x", "dst": "fb"}, {"src": "fa", "dst": "ga"}, {"src": "fb", "dst": "gb"}, {"src": "gb", "dst": "gx"}, {"src": "ga", "dst": "adam"}],
    )
    start = np.array([0.0, 1.0, 2.0, 3.0, 3.0, 4.0, 5.0])
    priority = executor_priority(graph, start)
    n = graph.num_ops
    # forward ops keep their index; gb (class b, forward started at 2) before ga (started at 1);
    # gx (no class) inherits the key of the backward op before it in topological order (gb's) and
    # follows it; the update goes last of all.
    assert priority.tolist() == [0.0, 1.0, 2.0, n + 2.0, n + 0.0, n + 1.0, 2 * n + 6.0]
