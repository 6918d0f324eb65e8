"""Which address to listen on when HOSTNAME comes from the environment (see resolve_bind_host)."""

from __future__ import annotations

import ipaddress
import logging
import socket

logger = logging.getLogger(__name__)

ANY_ADDRESS = "0.0.0.0"


def resolve_bind_host(hostname: str, *, from_env: bool) -> str:
    """The address to bind. Shells and containers export HOSTNAME as the machine's name, which is
    also TEI's variable for the listen address: binding that name would listen on one interface
    only (or fail). So an environment HOSTNAME is honoured only when it is an IP address or a name
    that resolves to an address this machine can bind; otherwise we listen on 0.0.0.0 (TEI's
    default). A --hostname given on the command line is always honoured."""
    if _is_ip(hostname) or not from_env:
        return hostname
    if hostname == socket.gethostname():
        logger.info("HOSTNAME=%s is this machine's name; listening on %s", hostname, ANY_ADDRESS)
        return ANY_ADDRESS
    if _is_bindable(hostname):
        return hostname
    logger.warning("HOSTNAME=%s is not a local address; listening on %s", hostname, ANY_ADDRESS)
    return ANY_ADDRESS


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_bindable(hostname: str) -> bool:
    try:
        infos = socket.getaddrinfo(hostname, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    for family, _, _, _, address in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((address[0], 0))
        except OSError:
            continue
        return True
    return False


def bind_unlistening(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) but not listening: until the server listens on it (after
    the engine's warm-up), connections are refused rather than left waiting in the kernel's
    backlog, so probes and load balancers see no server before it can answer. Sanic would bind
    and listen before its start-up listeners run."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not _is_ip(host):
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
