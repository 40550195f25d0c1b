"""Point-to-point tensors between the ranks of one measurement or calibration.

Ranks of one host on gloo exchange tensors over direct loopback sockets (`LocalSockets`), one
per pair of ranks; everywhere else (NCCL, ranks on several hosts, ``RLPLACE_P2P=gloo``)
through ``torch.distributed``'s ``isend`` / ``recv``. Gloo's point-to-point path costs a CPU
rank far more than the bytes it moves: on the 2-core development VM a 4-128 kB exchange
between two processes that compute between exchanges took 0.8-2.5 ms of wall time with gloo
(growing with the compute in between; not Nagle, scheduler slices, core pinning or the order
receives are posted) against 0.05 ms over plain sockets, which made a message-heavy split
measure up to 3x its simulated step. A CPU rank stands in for an accelerator, whose messages
do not wait on a communication library's threads; the sockets keep the measurement about the
placement.

The socket path never deadlocks on full socket buffers: a rank that sends or waits for a
message keeps reading whatever any peer sends it into that peer's inbox (`_pump`), so two
ranks sending each other large tensors both make progress. Messages between two ranks are
raw bytes in the order they are sent (the executor's plan fixes that order on both ends).

`open_links` (collective, once per process after ``init_process_group``) decides which path
this process uses (one host: the same host name, boot and network namespace for every rank); `send_tensor` and `recv_tensor` use it.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

#: ``gloo`` keeps gloo's own point-to-point path on one host too.
P2P_VARIABLE = "RLPLACE_P2P"
_RANK = struct.Struct("!i")
_CHUNK = 1 << 20


class LocalSockets:
    """One connected TCP socket to every other rank of this host, with an inbox per peer.

    Attributes:
        rank: this rank.
        peers: rank -> socket (non-blocking, ``TCP_NODELAY``).
    """

    def __init__(self, rank: int, peers: dict[int, socket.socket]) -> None:
        self.rank = rank
        self.peers = peers
        self._inbox = {peer: bytearray() for peer in peers}
        self._selector = selectors.DefaultSelector()
        for peer, sock in peers.items():
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(sock, selectors.EVENT_READ, peer)

    @classmethod
    def connect(cls, rank: int, world_size: int) -> LocalSockets:
        """Collective: every rank listens on loopback, ranks connect to every lower rank and
        accept every higher one (the ports travel through ``all_gather_object``)."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(world_size)
        ports: list[Any] = [None] * world_size
        dist.all_gather_object(ports, listener.getsockname()[1])
        peers: dict[int, socket.socket] = {}
        for lower in range(rank):
            sock = socket.create_connection(("127.0.0.1", int(ports[lower])))
            sock.sendall(_RANK.pack(rank))
            peers[lower] = sock
        for _ in range(rank + 1, world_size):
            sock, _ = listener.accept()
            peers[_RANK.unpack(_read_exactly(sock, _RANK.size))[0]] = sock
        listener.close()
        dist.barrier()
        return cls(rank, peers)

    def send(self, peer: int, data: memoryview) -> None:
        """Send ``data`` to ``peer`` in full, reading every peer's incoming bytes meanwhile."""
        sock = self.peers[peer]
        sent, total = 0, len(data)
        while sent < total:
            try:
                sent += sock.send(data[sent : sent + _CHUNK])
            except BlockingIOError:
                self._pump(wait_for_write=sock)
            except (BrokenPipeError, ConnectionResetError):
                raise self._gone(peer) from None

    def recv_into(self, peer: int, out: memoryview) -> None:
        """Fill ``out`` with the next ``len(out)`` bytes ``peer`` sent."""
        inbox, need = self._inbox[peer], len(out)
        while len(inbox) < need:
            self._pump()
        out[:] = inbox[:need]
        del inbox[:need]

    def close(self) -> None:
        self._selector.close()
        for sock in self.peers.values():
            sock.close()

    def _pump(self, wait_for_write: socket.socket | None = None) -> None:
        """Block until some peer's bytes arrive (or ``wait_for_write`` can take more), then
        move everything readable into the inboxes."""
        if wait_for_write is not None:
            self._selector.modify(wait_for_write, selectors.EVENT_READ | selectors.EVENT_WRITE, self._peer_of(wait_for_write))
        try:
            events = self._selector.select()
        finally:
            if wait_for_write is not None:
                self._selector.modify(wait_for_write, selectors.EVENT_READ, self._peer_of(wait_for_write))
        for key, mask in events:
            if not mask & selectors.EVENT_READ:
                continue
            try:
                chunk = key.fileobj.recv(_CHUNK)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise self._gone(key.data)
            self._inbox[key.data] += chunk

    def _gone(self, peer: int) -> RuntimeError:
        return RuntimeError(f"rank {self.rank}: rank {peer} closed its connection (it exited or crashed)")

    def _peer_of(self, sock: socket.socket) -> int:
        return next(peer for peer, candidate in self.peers.items() if candidate is sock)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise RuntimeError("a rank closed its connection during the handshake")
        data += chunk
    return data


_LINKS: LocalSockets | None = None


def open_links(rank: int, world_size: int, backend: str) -> None:
    """Collective: choose this process's point-to-point path (see the module docstring)."""
    global _LINKS
    close_links()
    if backend != "gloo" or world_size < 2:
        return
    hosts: list[Any] = [None] * world_size
    dist.all_gather_object(hosts, (socket.gethostname(), _boot_id(), _network_namespace(), os.environ.get(P2P_VARIABLE, "sockets")))
    if len(set(hosts)) == 1 and hosts[0][-1] != "gloo":
        _LINKS = LocalSockets.connect(rank, world_size)


def close_links() -> None:
    global _LINKS
    if _LINKS is not None:
        _LINKS.close()
        _LINKS = None


def uses_sockets() -> bool:
    """True when this process sends tensors over `LocalSockets`."""
    return _LINKS is not None


def send_tensor(tensor: torch.Tensor, dst: int) -> Any:
    """Send a contiguous tensor to ``dst``: done when it returns on the socket path (None), a
    ``torch.distributed`` work to wait for otherwise."""
    if _LINKS is None:
        return dist.isend(tensor, dst=dst)
    _LINKS.send(dst, _bytes(tensor))
    return None


def recv_tensor(buffer: torch.Tensor, src: int) -> None:
    """Receive the next tensor ``src`` sent into ``buffer`` (contiguous, its shape and dtype)."""
    if _LINKS is None:
        dist.recv(buffer, src=src)
        return
    _LINKS.recv_into(src, _bytes(buffer))


def _bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy()) if tensor.numel() else memoryview(bytearray())


def _network_namespace() -> int:
    """Inode of this process's network namespace (ranks in two namespaces share no loopback)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""
