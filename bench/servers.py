"""The far side of the floor and zerorpc cases, run as ``python -m zbridge_bench.servers MODE ...``
(``bench.servers`` in a clone).

    zmq_worker ENDPOINT   DEALER connected to a zmq.proxy backend; msgpack dict in and out
    zmq_router ENDPOINT   the same worker on a ROUTER it binds itself: callers talk to it direct
    pipe RFD WFD          length-prefixed echo over two os.pipe file descriptors
    unix FD               the zmq_worker's msgpack dicts, length-prefixed, over one end of a
                          Unix socketpair (FD, inherited)
    zerorpc ENDPOINT      a zerorpc server exposing noop
    zmq_echo ENDPOINT     a ROUTER bound at ENDPOINT echoing every message, frames zero-copy

Each runs until killed (the benchmark TERMs its process group) or its input ends.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

from .tools import noop

LENGTH = struct.Struct("!I")
CHUNK = 65536  # bytes asked of one recv(): a small message arrives in one system call


def zmq_worker(endpoint: str, direct: bool = False) -> None:
    import msgpack
    import zmq
    sock = zmq.Context().socket(zmq.ROUTER if direct else zmq.DEALER)
    sock.linger = 0
    if direct:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    pid = os.getpid()
    while True:
        client, body = sock.recv_multipart()
        request = msgpack.unpackb(body, raw=False)
        # "pid" lets the benchmark see that every worker is connected before it measures
        result = pid if request["method"] == "pid" else noop(*request["params"])
        sock.send_multipart([client, msgpack.packb({"result": result}, use_bin_type=True)])


def read_exact(fd: int, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_message(fd: int) -> bytes:
    (size,) = LENGTH.unpack(read_exact(fd, LENGTH.size))
    return read_exact(fd, size)


def write_message(fd: int, body: bytes) -> None:
    data = memoryview(LENGTH.pack(len(body)) + body)
    while data:
        data = data[os.write(fd, data):]


def pipe(rfd: str, wfd: str) -> None:
    read, write = int(rfd), int(wfd)
    try:
        while True:
            write_message(write, noop(read_message(read)))
    except EOFError:
        pass


def recv_message(sock: socket.socket) -> bytes:
    """One length-prefixed message from a stream socket (one recv() when it is small)."""
    data, need = b"", LENGTH.size
    while len(data) < need:
        chunk = sock.recv(CHUNK)
        if not chunk:
            raise EOFError
        data += chunk
        if need == LENGTH.size and len(data) >= need:
            need += LENGTH.unpack_from(data)[0]
    return data[LENGTH.size:]


def send_message(sock: socket.socket, body: bytes) -> None:
    sock.sendall(LENGTH.pack(len(body)) + body)


def unix(fd: str) -> None:
    import msgpack
    sock = socket.socket(fileno=int(fd))
    try:
        while True:
            request = msgpack.unpackb(recv_message(sock), raw=False)
            send_message(sock, msgpack.packb({"result": noop(*request["params"])}, use_bin_type=True))
    except (EOFError, ConnectionResetError):
        pass


def zerorpc_server(endpoint: str) -> None:
    import zerorpc

    class Tools:
        def noop(self, payload=None):
            return noop(payload)

    server = zerorpc.Server(Tools())
    server.bind(endpoint)
    server.run()


def zmq_router(endpoint: str) -> None:
    zmq_worker(endpoint, direct=True)


def zmq_echo(endpoint: str) -> None:
    """The floor for large buffers: frames received and sent back with copy=False."""
    import zmq
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, -1)
    sock.bind(endpoint)
    while True:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)


MODES = {"zmq_worker": zmq_worker, "zmq_router": zmq_router, "pipe": pipe, "unix": unix,
         "zerorpc": zerorpc_server, "zmq_echo": zmq_echo}

if __name__ == "__main__":
    MODES[sys.argv[1]](*sys.argv[2:])
