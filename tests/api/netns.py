"""Test hosts in network namespaces: a bridge in the root namespace and one veth pair per host, each host with
its own address and host name, and a TCP forwarder bound to the bridge's address that stands for a database
server on the network. Needs root and `ip`; `unavailable()` gives the reason to skip elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import threading
from typing import Any

from app.worker.lease import Keepalive


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "unshare") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.X.0/24 that no address or route of this machine touches."""
    shown = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    shown += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    for third in random.sample(range(1, 255), 254):
        if f"10.213.{third}." not in shown:
            return ipaddress.IPv4Network(f"10.213.{third}.0/24")
    raise RuntimeError("no free 10.213.X.0/24 subnet")


class Network:
    """`hosts` namespaces on one bridge: the root namespace is `bridge_ip`, host i is `host_ips[i]`. Everything
    it made is deleted on exit (deleting a namespace deletes its end of the veth pair, and the pair with it)."""

    def __init__(self, hosts: int) -> None:
        tag = f"{os.getpid() % 100000}"
        self.bridge = f"cwbr{tag}"
        self.namespaces = [f"cw{tag}h{i}" for i in range(hosts)]
        self.veths = [f"cwv{tag}h{i}" for i in range(hosts)]  # the root namespace's ends
        self.bridge_ip = ""
        self.host_ips: list[str] = []

    def __enter__(self) -> Network:
        try:
            self._create()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _create(self) -> None:
        subnet = _free_subnet()
        self.bridge_ip = str(subnet.network_address + 1)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, (ns, veth) in enumerate(zip(self.namespaces, self.veths, strict=True)):
            peer, address = f"{veth}p", str(subnet.network_address + 10 + i)
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("link", "set", peer, "netns", ns)
            _ip("-n", ns, "link", "set", peer, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self.host_ips.append(address)

    def command(self, i: int, hostname: str, argv: list[str]) -> list[str]:
        """`argv` run inside host i, under its own host name (a UTS namespace of its own)."""
        script = f'hostname {hostname} && exec "$0" "$@"'
        return ["ip", "netns", "exec", self.namespaces[i], "unshare", "--uts", "sh", "-c", script, *argv]

    def cut(self, i: int) -> None:
        """Host i's cable pulled: its veth's root-namespace end goes down."""
        _ip("link", "set", self.veths[i], "down")

    def __exit__(self, *exc: object) -> None:
        for ns in self.namespaces:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", ns)
        # a pair whose peer never reached its namespace (creation failed half-way) is still all here
        for veth in self.veths:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", veth)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.bridge)


class Forwarder:
    """A TCP forwarder on `listen` to `target`, on an event loop in a thread of its own: a database server that
    listens on 127.0.0.1 only becomes reachable on the bridge's address, with its access rules unchanged.
    `keepalive`: the TCP keepalives and user timeout that the database applies to a session that asks for them
    (app/worker/lease.py), applied here, where the network is (the database's own socket is on the loopback,
    whose peer always answers); a host that stops answering has its session closed at the database."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], keepalive: Keepalive | None = None) -> None:
        self.listen, self.target, self.keepalive = listen, target, keepalive
        self.loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-forwarder", daemon=True)
        self._server: Any = None
        self._error: BaseException | None = None

    def __enter__(self) -> Forwarder:
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(asyncio.start_server(self._handle, *self.listen))
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        downstream = writer.get_extra_info("socket")
        if self.keepalive is not None and downstream is not None:
            alive = self.keepalive
            downstream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            downstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, alive.idle)
            downstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, alive.interval)
            downstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, alive.probes)
            downstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, alive.user_timeout_ms)
        with contextlib.suppress(asyncio.CancelledError):  # cancelled at exit: an end, not an error
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    def __exit__(self, *exc: object) -> None:
        def close_all() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_later(0.2, self.loop.stop)

        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(close_all)
            self._thread.join(10)
        self.loop.close()
