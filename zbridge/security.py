"""CURVE keys and authentication, through pyzmq's own ``zmq.auth``.

Keys are zmq certificate files: ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode
0600). A hub with a secret key is a CURVE server; it admits a client or daemon only if the
peer's public key is in the allowed directory for that role (re-read at every connection,
so adding or removing a file takes effect without a restart).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

if TYPE_CHECKING:
    from .config import Settings

CLIENTS = "clients"
DAEMONS = "daemons"


def keygen(directory: str, name: str, *, force: bool = False) -> tuple[str, str]:
    """Write NAME.key and NAME.key_secret in ``directory``; the secret is readable by us only.

    An existing key is never replaced unless ``force``: losing a secret key silently locks
    out every peer that trusted its public half.
    """
    existing = [p for p in (os.path.join(directory, f"{name}.key"),
                            os.path.join(directory, f"{name}.key_secret")) if os.path.lexists(p)]
    if existing and not force:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (give --force to replace "
                              "the keypair; peers holding the old public key will be refused)")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    old = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def load_keypair(secret_file: str) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(secret_file)
    if secret is None:
        raise ValueError(f"{secret_file} holds no secret key (give the .key_secret file)")
    return public, secret


def load_public(public_file: str) -> bytes:
    return zmq.auth.load_certificate(public_file)[0]


@dataclass
class Allowlist:
    """zmq.auth credentials provider: keys in a directory, plus keys added in memory."""
    directory: str | None
    extra: set[bytes] = field(default_factory=set)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.extra:
            return True
        if not self.directory or not os.path.isdir(self.directory):
            return False
        return key in zmq.auth.load_certificates(self.directory)


def make_server(sock: zmq.Socket[Any], keypair: tuple[bytes, bytes], domain: str) -> None:
    sock.curve_publickey, sock.curve_secretkey = keypair
    sock.curve_server = True
    sock.zap_domain = domain.encode()


def make_client(sock: zmq.Socket[Any], server_public: bytes, keypair: tuple[bytes, bytes]) -> None:
    sock.curve_serverkey = server_public
    sock.curve_publickey, sock.curve_secretkey = keypair


def start_authenticator(context: zmq.Context[Any], domains: dict[str, Allowlist]) -> ThreadAuthenticator:
    auth = ThreadAuthenticator(context)
    auth.start()
    for domain, allowlist in domains.items():
        auth.configure_curve_callback(domain=domain, credentials_provider=allowlist)
    return auth


def client_keys(server_key: str, secret: str) -> tuple[bytes, tuple[bytes, bytes]] | None:
    """(server public key, own keypair) from files, or None when neither is given."""
    if not server_key and not secret:
        return None
    if not (server_key and secret):
        raise ValueError("CURVE needs both the hub's public key (curve_server_key) and our "
                         "own secret key file (curve_secret)")
    return load_public(server_key), load_keypair(secret)


def write_public_key(path: str, public: bytes) -> None:
    """A public certificate file in zmq's format, readable by zmq.auth.load_certificate."""
    with open(path, "w") as f:
        f.write("#   zbridge hub public key\nmetadata\ncurve\n"
                f'    public-key = "{public.decode()}"\n')


class HubSecurity:
    """CURVE for one hub: which of its sockets are servers, its authenticator, and the
    ephemeral keypair its own local daemons use when the daemon socket is CURVE."""

    def __init__(self, settings: Settings, context: zmq.Context[Any], private_dir: str, frontend: str) -> None:
        from .endpoints import check_daemon_bind, check_frontend
        on = bool(settings.curve_secret)
        self.frontend_curve = on and frontend.startswith("tcp://")
        self.daemons_curve = on and bool(settings.daemon_bind)
        self.auth: ThreadAuthenticator | None = None
        self.local_daemon_args: list[str] = []
        check_frontend(frontend, curve=on, allow_local_users=settings.allow_local_users)
        for endpoint in (settings.daemon_bind, settings.heartbeat_bind):
            if endpoint:
                check_daemon_bind(endpoint, curve=on)
        if not on:
            return
        if self.frontend_curve and not settings.curve_clients:
            raise ValueError("a CURVE hub needs curve_clients: the directory of allowed client keys")
        self.keypair = load_keypair(settings.curve_secret)
        domains = {CLIENTS: Allowlist(settings.curve_clients)}
        if self.daemons_curve:
            public_file, secret_file = keygen(private_dir, "local-daemon")
            hub_public = os.path.join(private_dir, "hub.key")
            write_public_key(hub_public, self.keypair[0])
            domains[DAEMONS] = Allowlist(settings.curve_daemons, {load_public(public_file)})
            self.local_daemon_args = ["--curve-secret", secret_file, "--curve-server-key", hub_public]
        self.auth = start_authenticator(context, domains)

    def secure(self, frontend: zmq.Socket[Any], daemon_sockets: list[zmq.Socket[Any]]) -> None:
        if self.frontend_curve:
            make_server(frontend, self.keypair, CLIENTS)
        if self.daemons_curve:
            for sock in daemon_sockets:
                make_server(sock, self.keypair, DAEMONS)

    def stop(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
