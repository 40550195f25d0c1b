"""Point-to-point tensors between CPU ranks over loopback sockets (`rlplace.measure.p2p`):
whole tensors in send order, any dtype, no deadlock when two ranks send each other more than
the socket buffers hold, a clear error when a peer is gone."""

from __future__ import annotations

import datetime
import multiprocessing
import os
from typing import Any

import pytest
import torch
import torch.distributed as dist

from rlplace.measure.launch import free_port
from rlplace.measure.p2p import P2P_VARIABLE, close_links, open_links, recv_tensor, send_tensor, uses_sockets

BIG = 6_000_000  # float32 elements: 24 MB each way, far beyond loopback socket buffers


def tensors() -> list[torch.Tensor]:
    return [
        torch.arange(12, dtype=torch.float32).reshape(3, 4),
        torch.tensor([True, False, True]),
        torch.tensor(2.5, dtype=torch.float64),  # 0-d
        torch.empty(0, 7),
        torch.arange(BIG, dtype=torch.float32),
        torch.tensor([1.5, -3.0], dtype=torch.bfloat16),
    ]


def run_rank(rank: int, port: int, mode: str, results: Any) -> None:
    if mode == "gloo":
        os.environ[P2P_VARIABLE] = "gloo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        open_links(rank, 2, "gloo")
        peer = 1 - rank
        if mode == "die" and rank == 1:
            os._exit(0)  # the peer vanishes without a word
        try:
            # both ranks send everything first, then receive: only works if sending keeps reading
            works = [send_tensor(t.contiguous(), peer) for t in tensors()]
            got = []
            for t in tensors():
                buffer = torch.empty_like(t)
                recv_tensor(buffer, peer)
                got.append(buffer)
            for work in works:
                if work is not None:
                    work.wait()
            results.put((rank, uses_sockets(), [torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, tensors(), strict=True)]))
        except RuntimeError as exc:
            results.put((rank, uses_sockets(), str(exc)))
    finally:
        close_links()
        if mode != "die":
            dist.destroy_process_group()


def exchange(mode: str, expected: int) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=run_rank, args=(rank, port, mode, results)) for rank in (0, 1)]
    for process in processes:
        process.start()
    out = [results.get(timeout=120) for _ in range(expected)]
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    return sorted(out, key=lambda item: item[0])


@pytest.mark.parametrize("mode", ["sockets", "gloo"])  # gloo: RLPLACE_P2P=gloo keeps torch.distributed's path
def test_tensors_arrive_whole_in_order_even_when_both_ranks_send_first(mode: str) -> None:
    out = exchange(mode, 2)
    assert [rank for rank, _, _ in out] == [0, 1]
    for _, sockets, same in out:
        assert sockets == (mode == "sockets")
        assert same == [True] * len(tensors())


def test_a_vanished_peer_is_a_clear_error_not_a_hang() -> None:
    ((rank, sockets, error),) = exchange("die", 1)
    assert rank == 0 and sockets and "rank 1 closed its connection" in error
