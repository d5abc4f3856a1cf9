"""``fence = "dom0"`` in the failover engine: a silent master is taken over only after
the fencer (guardian's fence-peer escalation to guardian-hostd) confirms the peer is
dead; a refused, failed or unanswered fence means no takeover.  Two engines on
loopback with the fake kernel of test_failover_engine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from test_failover_engine import Pair, keyfile, run, state, until  # noqa: F401 - fixture

from ipfailover._engine import PairEngine


class Fencer:
    def __init__(self, answer: tuple[bool, str], delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.calls: list[tuple[str, str, float]] = []
        self.answered: list[float] = []

    async def __call__(self, vm: str, reason: str) -> tuple[bool, str]:
        self.calls.append((vm, reason, time.monotonic()))
        await asyncio.sleep(self.delay)
        self.answered.append(time.monotonic())
        return self.answer


def fenced_pair(tmp_path: Path, keyfile: Path, fencer: Fencer | None,  # noqa: F811
                **kw: object) -> Pair:
    p = Pair(tmp_path, keyfile, fence="dom0", **kw)
    p.e2.fencer = fencer
    return p


async def settle_then_silence(p: Pair) -> None:
    p.start()
    await p.settled()
    p.tasks[0].cancel()  # vm01's engine dies without a word


def test_takeover_waits_for_the_confirmed_fence(tmp_path: Path,
                                                keyfile: Path) -> None:  # noqa: F811
    fencer = Fencer((True, "dom0: done: vm01 destroyed, death confirmed"), delay=0.3)

    async def body() -> None:
        p = fenced_pair(tmp_path, keyfile, fencer)
        try:
            await settle_then_silence(p)
            await until(lambda: state(p.e2) == "master", 3, "vm02 master")
            t_master = time.monotonic()
            assert len(fencer.calls) == 1
            vm, reason, _ = fencer.calls[0]
            assert vm == "vm01" and reason
            # not before dom0 answered
            assert fencer.answered and t_master >= fencer.answered[0]
            st = p.e2.status()
            assert "peer fenced (dom0: done: vm01 destroyed" in st["reason"], st["reason"]
            assert st["counters"]["fences"] == 1 and st["counters"]["takeovers"] == 1
        finally:
            p.lan.holders.clear()
            await p.close()

    run(body)


def test_fence_vm_names_the_peer_at_dom0(tmp_path: Path, keyfile: Path) -> None:  # noqa: F811
    fencer = Fencer((True, "ok"))

    async def body() -> None:
        p = Pair(tmp_path, keyfile)
        p.e2 = PairEngine(replace(p.s2, fence="dom0", fence_vm="web-a.example"),
                          ops=p.e2.ops, netlink=False)
        p.e2.fencer = fencer
        try:
            await settle_then_silence(p)
            await until(lambda: state(p.e2) == "master", 3, "vm02 master")
            assert [c[0] for c in fencer.calls] == ["web-a.example"]
        finally:
            p.lan.holders.clear()
            await p.close()

    run(body)


def test_refused_fence_means_no_takeover(tmp_path: Path, keyfile: Path) -> None:  # noqa: F811
    fencer = Fencer((False, "dom0: refused: vm01 is in maintenance"))

    async def body() -> None:
        p = fenced_pair(tmp_path, keyfile, fencer)
        try:
            await settle_then_silence(p)
            await until(lambda: p.e2.status()["counters"].get("fence_failures", 0) >= 1, 3,
                        "a failed fence")
            await asyncio.sleep(0.5)
            st = p.e2.status()
            assert st["state"] != "master" and "vm02" not in p.holders()
            assert "fence failed (dom0: refused: vm01 is in maintenance)" in st["reason"], \
                st["reason"]
            assert len(fencer.calls) == 1  # retried only after fence_retry (5 s)
        finally:
            p.lan.holders.clear()
            await p.close()

    run(body)


def test_unanswered_fence_times_out_and_is_not_doubled(tmp_path: Path,
                                                       keyfile: Path) -> None:  # noqa: F811
    fencer = Fencer((True, "too late"), delay=30.0)

    async def body() -> None:
        p = fenced_pair(tmp_path, keyfile, fencer, fence_timeout=0.3)
        try:
            await settle_then_silence(p)
            await until(lambda: p.e2.status()["counters"].get("fence_failures", 0) >= 1, 3,
                        "the fence timing out")
            st = p.e2.status()
            assert "no answer in 0.3 s" in st["reason"], st["reason"]
            assert st["state"] != "master" and "vm02" not in p.holders()
            assert len(fencer.calls) == 1
        finally:
            p.lan.holders.clear()
            await p.close()

    run(body)


def test_without_a_fencer_a_silent_peer_is_never_taken_over(
        tmp_path: Path, keyfile: Path) -> None:  # noqa: F811
    async def body() -> None:
        p = fenced_pair(tmp_path, keyfile, None)
        try:
            await settle_then_silence(p)
            await until(lambda: p.e2.status()["counters"].get("fence_failures", 0) >= 1, 3,
                        "a failed fence")
            assert "no escalation channel available" in p.e2.status()["reason"]
            assert "vm02" not in p.holders()
        finally:
            p.lan.holders.clear()
            await p.close()

    run(body)
