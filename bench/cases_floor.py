"""The floors: raw pyzmq through ``zmq.proxy``, raw pyzmq straight to the worker (no broker),
a raw round trip over a Unix socketpair, and a raw os.pipe ping-pong.

They do the least any broker-shaped (proxy) or pipe-shaped (pipe) design could do on this
machine, so zbridge's cost above them is its own.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import struct
import threading
from typing import Any, Iterator

import msgpack
import zmq

from . import procs
from .cases import Handle, Target, huge_case, latency_case, sweep_cases, throughput_cases
from .profiles import Profile
from .servers import read_message, recv_message, send_message, write_message

RECV_TIMEOUT_MS = 30_000


def run_proxy(frontend: zmq.Socket, backend: zmq.Socket) -> None:
    try:
        zmq.proxy(frontend, backend)
    except zmq.ContextTerminated:
        pass
    finally:
        frontend.close(0)
        backend.close(0)


def zmq_call(sock: zmq.Socket, method: str, params: Any) -> Any:
    sock.send(msgpack.packb({"method": method, "params": params}, use_bin_type=True))
    return msgpack.unpackb(sock.recv(), raw=False)["result"]


class ProxyClients:
    """One DEALER per calling thread, all closed at teardown (before the context ends)."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.context, self.endpoint = context, endpoint
        self.sockets: list[zmq.Socket] = []
        self.lock = threading.Lock()

    def socket(self) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvtimeo = RECV_TIMEOUT_MS  # a dead worker fails the case instead of hanging
        sock.connect(self.endpoint)
        with self.lock:
            self.sockets.append(sock)
        return sock

    def caller(self, payload: Any):
        return functools.partial(zmq_call, self.socket(), "noop", [payload])

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)


def wait_workers(clients: ProxyClients, workers: int, worker_procs: list) -> None:
    """The backend DEALER round-robins, so once all are connected, pids alternate."""
    sock = clients.socket()

    def probe() -> bool | None:
        for proc in worker_procs:
            procs.check_alive(proc, "floor worker")
        seen = {zmq_call(sock, "pid", None) for _ in range(2 * workers)}
        return True if len(seen) == workers else None
    procs.wait_until(probe, f"{workers} floor worker(s)")


@contextlib.contextmanager
def zmq_proxy(workers: int) -> Iterator[Handle]:
    """client DEALER -> ipc -> zmq.proxy(ROUTER, DEALER) in a thread -> ipc -> worker processes."""
    context = zmq.Context()
    try:
        with procs.private_dir() as directory, contextlib.ExitStack() as stack:
            front, back = procs.ipc(directory, "front"), procs.ipc(directory, "back")
            frontend, backend = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
            try:
                frontend.bind(front)
                backend.bind(back)
            except BaseException:
                frontend.close(0)
                backend.close(0)
                raise
            threading.Thread(target=run_proxy, args=(frontend, backend), name="floor-proxy",
                             daemon=True).start()
            clients = ProxyClients(context, front)
            stack.callback(clients.close)
            worker_procs = [stack.enter_context(procs.child(procs.python_module(
                procs.SERVERS, "zmq_worker", back))) for _ in range(workers)]
            wait_workers(clients, workers, worker_procs)
            yield Handle(clients.caller, lambda: {"daemon": [p.pid for p in worker_procs]})
    finally:
        context.term()  # the proxy thread gets ETERM and closes its sockets


@contextlib.contextmanager
def zmq_direct() -> Iterator[Handle]:
    """client DEALER -> ipc -> the worker's own ROUTER: a round trip with no broker at all."""
    context = zmq.Context()
    try:
        with procs.private_dir() as directory, contextlib.ExitStack() as stack:
            endpoint = procs.ipc(directory, "worker")
            worker = stack.enter_context(procs.child(procs.python_module(
                procs.SERVERS, "zmq_router", endpoint)))
            clients = ProxyClients(context, endpoint)
            stack.callback(clients.close)
            wait_workers(clients, 1, [worker])
            yield Handle(clients.caller, lambda: {"daemon": [worker.pid]})
    finally:
        context.term()


def unix_call(sock: socket.socket, method: str, params: Any) -> Any:
    send_message(sock, msgpack.packb({"method": method, "params": params}, use_bin_type=True))
    return msgpack.unpackb(recv_message(sock), raw=False)["result"]


@contextlib.contextmanager
def unix_pair() -> Iterator[Handle]:
    """One end of a Unix socketpair here, the other inherited by a worker process (the shape
    of zbridge's embedded channel): a length-prefixed msgpack round trip, nothing else."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # a kernel receive timeout (the socket stays blocking): a hung worker fails the case
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", RECV_TIMEOUT_MS // 1000, 0))
        argv = procs.python_module(procs.SERVERS, "unix", str(theirs.fileno()))
        with procs.child(argv, pass_fds=(theirs.fileno(),)) as proc:
            theirs.close()  # only the child holds its end now, so its exit means EOF here
            yield Handle(lambda payload: functools.partial(unix_call, ours, "noop", [payload]),
                         lambda: {"daemon": [proc.pid]})
    finally:
        theirs.close()
        ours.close()


def pipe_call(write: int, read: int, message: bytes) -> bytes:
    write_message(write, message)
    return read_message(read)


@contextlib.contextmanager
def pipe_pair() -> Iterator[Handle]:
    """Two os.pipe()s to a child process that echoes length-prefixed messages."""
    to_child, from_child = os.pipe(), os.pipe()
    theirs = (to_child[0], from_child[1])
    open_fds = {*to_child, *from_child}
    try:
        argv = procs.python_module(procs.SERVERS, "pipe", *map(str, theirs))
        with procs.child(argv, pass_fds=theirs) as proc:
            for fd in theirs:  # only the child holds these now, so its exit means EOF here
                os.close(fd)
                open_fds.discard(fd)

            def caller(payload: str):
                return functools.partial(pipe_call, to_child[1], from_child[0], payload.encode())
            yield Handle(caller, lambda: {"daemon": [proc.pid]})
    finally:
        for fd in open_fds:
            os.close(fd)


def targets(profile: Profile) -> list[Target]:
    name = "floor.zmq_proxy"
    return [
        # first: the runner interleaves groups, so this floor lands beside zbridge.embedded.w1
        Target("floor.unix", unix_pair, (latency_case("floor.unix", profile, workers=1),)),
        Target(f"{name}.w1", lambda: zmq_proxy(1),
               (latency_case(name, profile, workers=1), *sweep_cases(name, profile, workers=1),
                *throughput_cases(f"{name}.w1", profile, workers=1))),
        Target(f"{name}.w2", lambda: zmq_proxy(2), tuple(throughput_cases(f"{name}.w2", profile, workers=2))),
        Target("floor.zmq_direct", zmq_direct,
               (latency_case("floor.zmq_direct", profile, workers=1),
                *sweep_cases("floor.zmq_direct", profile, workers=1),
                huge_case("floor.zmq_direct", profile, workers=1),
                *throughput_cases("floor.zmq_direct.w1", profile, workers=1))),
        Target("floor.pipe", pipe_pair,
               (latency_case("floor.pipe", profile, workers=1), *sweep_cases("floor.pipe", profile, workers=1))),
    ]
