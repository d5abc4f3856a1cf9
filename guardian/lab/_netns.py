"""Network namespaces: ``ip netns`` wrappers, and running Python code inside one.

A network namespace is a per-thread attribute on Linux, so Python code (requests,
dnspython, smtplib, plain sockets) can run "inside" a namespace by moving one worker
thread into it with setns(2). Sockets keep the namespace they were created in.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ._errors import LabError, LabTimeout
from ._proc import run

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_names() -> list[str]:
    """Names of the namespaces registered with ``ip netns`` (the files in /run/netns)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(netns_path(name)).st_ino
    except OSError:
        return None


def netns_add(name: str) -> None:
    run(["ip", "netns", "add", name])


def netns_delete(name: str) -> None:
    if netns_path(name).exists():
        run(["ip", "netns", "delete", name])


def ip(netns: str, *args: str, check: bool = True, timeout: float = 10.0) -> str:
    """``ip -n NETNS ARGS...``; returns stdout."""
    return run(["ip", "-n", netns, *args], check=check, timeout=timeout).stdout


def enter_netns(path: str | os.PathLike[str]) -> None:
    """Move the *calling thread* into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LabError(f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(path: str | os.PathLike[str], fn: Callable[[], T], timeout: float) -> T:
    """Run ``fn()`` in a fresh thread that lives in the network namespace at ``path``.

    Waits at most ``timeout`` seconds; ``fn`` should bound its own I/O (socket timeouts)
    because a thread cannot be killed: on timeout it is abandoned (it is a daemon thread).
    """
    fut: Future[T] = Future()

    def body() -> None:
        try:
            enter_netns(path)
            fut.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)

    threading.Thread(target=body, name=f"netns:{os.path.basename(path)}", daemon=True).start()
    try:
        return fut.result(timeout)
    except TimeoutError as exc:
        if fut.done():  # fn itself raised a TimeoutError (e.g. socket.timeout)
            raise
        raise LabTimeout(f"call in netns {path} did not return in {timeout:g} s") from exc


def netns_executor(path: str | os.PathLike[str], max_workers: int = 1) -> ThreadPoolExecutor:
    """A thread pool whose worker threads all live in the network namespace at ``path``."""
    return ThreadPoolExecutor(
        max_workers=max_workers,
        thread_name_prefix=f"netns:{os.path.basename(path)}",
        initializer=enter_netns,
        initargs=(os.fspath(path),),
    )
