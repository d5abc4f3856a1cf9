"""Escalation: the durable outbox and its pump (on a virtual clock, with a fake
channel that records calls), the backoff schedule, the exec and xenstore channels
(with fake xenstore-* tools on PATH keeping their store in a directory), the
channel registry and ``[escalation]`` config."""

from __future__ import annotations

import asyncio
import json
import os
import random
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from checks import ConfigErrors
from guardian import config
from guardian._model import EscalationSpec
from guardian.escalation import (
    Answer,
    AnswerState,
    Channel,
    EscalationError,
    Escalator,
    ExecChannel,
    HttpChannel,
    Outbox,
    Reason,
    Request,
    UnknownChannelError,
    XenstoreChannel,
    backoff,
    build_channel,
    load_channel_class,
    vm_uuid,
)

PY = sys.executable


def request(service: str = "web", **kw: object) -> Request:
    return Request(vm="vm01", vm_uuid="6c1b3f0e-0000-4000-8000-000000000001",
                   incarnation=kw.pop("incarnation", 3),  # type: ignore[arg-type]
                   action="recreate", reason=Reason(service, "http=CRITICAL: refused", 3,
                                                    "restart budget spent"))


class FakeChannel(Channel):
    """Answers from a script (an Answer or an exception per call); records calls."""

    name = "fake"

    def __init__(self, sends: list[Answer | Exception] | None = None,
                 polls: list[Answer | Exception] | None = None) -> None:
        super().__init__(EscalationSpec(channel="fake", vm="vm01"))
        self.sends = list(sends or [])
        self.polls = list(polls or [])
        self.sent: list[str] = []
        self.polled: list[str] = []

    async def send(self, request: Request, deadline: float) -> Answer:
        self.sent.append(request.request_id)
        return self._next(self.sends, Answer(AnswerState.ACCEPTED))

    async def poll(self, request_id: str, deadline: float) -> Answer:
        self.polled.append(request_id)
        return self._next(self.polls, Answer(AnswerState.IN_PROGRESS))

    @staticmethod
    def _next(script: list[Answer | Exception], default: Answer) -> Answer:
        item = script.pop(0) if script else default
        if isinstance(item, Exception):
            raise item
        return item


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def escalator(tmp_path: Path, channel: Channel, clock: Clock,
              events: list[tuple[str, str]] | None = None) -> Escalator:
    def on_event(entry: object, outcome: str, detail: str) -> None:
        if events is not None:
            events.append((outcome, detail))

    return Escalator(Outbox(tmp_path / "outbox"), channel, clock=clock,
                     rng=random.Random(1), on_event=on_event)


def files(tmp_path: Path) -> dict[str, dict[str, object]]:
    return {p.stem: json.loads(p.read_text()) for p in (tmp_path / "outbox").glob("*.json")}


# ----------------------------------------------------------------------------- backoff
def test_backoff_doubles_from_one_second_up_to_five_minutes_with_jitter() -> None:
    rng = random.Random(7)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (8, 128.0)]:
        for _ in range(50):
            d = backoff(attempt, rng)
            assert max(1.0, base * 0.8) <= d <= base * 1.2
    assert all(240.0 <= backoff(n, rng) <= 300.0 for n in (10, 20, 1000))
    assert all(backoff(n, rng) <= 300.0 for n in range(1, 60))
    assert all(backoff(n, rng) >= 1.0 for n in range(0, 60))
    assert backoff(50, rng, cap=10.0) <= 10.0
    # jitter spreads the delays
    assert len({round(backoff(4, rng), 6) for _ in range(20)}) > 10


# ----------------------------------------------------------------------------- outbox
def test_outbox_survives_a_crash_and_resends_with_the_same_id(tmp_path: Path) -> None:
    clock = Clock()

    async def first_life() -> str:
        ch = FakeChannel(sends=[EscalationError("connection refused")])
        esc = escalator(tmp_path, ch, clock)
        entry = esc.submit(request())
        assert entry is not None
        await esc.step(entry)          # fails: stays pending
        assert entry.state == "pending" and entry.attempts == 1
        assert ch.sent == [entry.request.request_id]
        return entry.request.request_id

    rid = asyncio.run(first_life())
    on_disk = files(tmp_path)
    assert list(on_disk) == [rid] and on_disk[rid]["state"] == "pending"
    assert not list((tmp_path / "outbox").glob(".*.tmp"))
    assert oct(stat.S_IMODE((tmp_path / "outbox" / f"{rid}.json").stat().st_mode)) == "0o600"

    # "crash": the objects are gone; a new daemon loads the outbox
    async def second_life() -> tuple[FakeChannel, Escalator]:
        ch = FakeChannel()
        esc = escalator(tmp_path, ch, clock)
        (entry,) = esc.outbox.open_entries()
        assert entry.request.request_id == rid and entry.next_at <= clock()
        # a new incident of the same service adds no second request
        assert esc.submit(request()) is None
        task = asyncio.create_task(esc.run())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if ch.sent:
                break
        task.cancel()
        return ch, esc

    ch, esc = asyncio.run(second_life())
    assert ch.sent == [rid]            # resent once, under the same id
    assert files(tmp_path)[rid]["state"] == "accepted"
    assert [e["request_id"] for e in esc.status()] == [rid]

    # a third life polls the accepted request; it does not send it again
    async def third_life() -> FakeChannel:
        ch = FakeChannel(polls=[Answer(AnswerState.DONE, "recreated")])
        esc = escalator(tmp_path, ch, clock)
        (entry,) = esc.outbox.open_entries()
        await esc.step(entry)
        assert esc.outbox.open_entries() == []
        return ch

    ch = asyncio.run(third_life())
    assert ch.sent == [] and ch.polled == [rid]
    assert files(tmp_path)[rid]["state"] == "done"
    # done: a later incident may escalate again (a new id)
    esc2 = escalator(tmp_path, FakeChannel(), clock)
    new = esc2.submit(request())
    assert new is not None and new.request.request_id != rid


def test_one_open_request_per_service(tmp_path: Path) -> None:
    esc = escalator(tmp_path, FakeChannel(), Clock())
    a = esc.submit(request("web"))
    assert a is not None
    assert esc.submit(request("web")) is None
    b = esc.submit(request("mail"))
    assert b is not None
    assert len(files(tmp_path)) == 2


def test_pump_states_and_backoff_on_a_virtual_clock(tmp_path: Path) -> None:
    clock = Clock()
    events: list[tuple[str, str]] = []
    ch = FakeChannel(
        sends=[EscalationError("timed out"),
               Answer(AnswerState.RETRY, "busy", retry_after=42.0),
               Answer(AnswerState.ACCEPTED, "queued")],
        polls=[EscalationError("HTTP 500"), Answer(AnswerState.IN_PROGRESS),
               Answer(AnswerState.DONE, "recreated", decision="recreate")])
    esc = escalator(tmp_path, ch, clock, events)
    entry = esc.submit(request())
    assert entry is not None

    async def scenario() -> list[float]:
        delays = []
        while entry.open:
            clock.now = max(clock.now, entry.next_at)
            before = clock.now
            await esc.step(entry)
            delays.append(round(entry.next_at - before, 3))
        return delays

    delays = asyncio.run(scenario())
    assert 0.8 <= delays[0] <= 1.2            # first failure: ~1 s
    assert delays[1] == 42.0                  # 429: retry_after honoured
    assert 0.2 <= delays[2] <= 0.3            # accepted: first poll soon (POLL_MIN)
    assert 1.0 <= delays[3] <= 1.2            # poll error: backoff
    assert 0.4 <= delays[4] <= 0.6            # still running: polls double from 0.25 s
    assert entry.state == "done" and entry.decision == "recreate"
    assert len(set(ch.sent)) == 1 and len(ch.sent) == 3
    assert [o for o, _ in events] == ["retry", "retry", "sent", "accepted", "retry", "done"]


@pytest.mark.parametrize(("answer", "state"), [
    (Answer(AnswerState.STALE, "incarnation 2 < 3"), "stale"),
    (Answer(AnswerState.REFUSED, "rate limit"), "refused"),
    (Answer(AnswerState.REJECTED, "malformed"), "rejected"),
    (Answer(AnswerState.FAILED, "xl create failed"), "failed"),
])
def test_final_answers_end_the_request(tmp_path: Path, answer: Answer, state: str) -> None:
    ch = FakeChannel(sends=[answer])
    esc = escalator(tmp_path, ch, Clock())
    entry = esc.submit(request())
    assert entry is not None
    asyncio.run(esc.step(entry))
    assert entry.state == state and not entry.open
    assert esc.status() == []
    assert files(tmp_path)[entry.request.request_id]["state"] == state


def test_an_unknown_id_on_poll_is_sent_again_under_the_same_id(tmp_path: Path) -> None:
    ch = FakeChannel(polls=[Answer(AnswerState.UNKNOWN)])
    esc = escalator(tmp_path, ch, Clock())
    entry = esc.submit(request())
    assert entry is not None

    async def scenario() -> None:
        await esc.step(entry)     # accepted
        await esc.step(entry)     # 404 -> pending
        assert entry.state == "pending"
        await esc.step(entry)     # sent again

    asyncio.run(scenario())
    assert ch.sent == [entry.request.request_id] * 2


def test_unreadable_outbox_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / "junk.json").write_text("{nope")
    (tmp_path / "outbox" / ".half.tmp").write_text("x")
    esc = escalator(tmp_path, FakeChannel(), Clock())
    assert esc.outbox.open_entries() == []
    assert not (tmp_path / "outbox" / ".half.tmp").exists()


# ----------------------------------------------------------------------------- exec
def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def spec(**kw: object) -> EscalationSpec:
    kw.setdefault("channel", "exec")
    kw.setdefault("vm", "vm01")
    return EscalationSpec(**kw)  # type: ignore[arg-type]


def test_exec_channel_sends_the_request_on_stdin_and_in_the_environment(
        tmp_path: Path) -> None:
    out = tmp_path / "got"
    prog = script(tmp_path / "esc",
                  f'cat > {out}.json; env | grep ^GUARDIAN_ESCALATION_ | sort > {out}.env\n')
    ch = build_channel(spec(command=(str(prog),)))
    assert isinstance(ch, ExecChannel)
    req = request()
    answer = asyncio.run(ch.send(req, time.monotonic() + 5))
    assert answer.state is AnswerState.ACCEPTED
    body = json.loads(Path(f"{out}.json").read_text())
    assert body["request_id"] == req.request_id and body["incarnation"] == 3
    assert body["reason"] == {"service": "web", "verdicts": "http=CRITICAL: refused",
                              "restarts": 3, "detail": "restart budget spent"}
    env = Path(f"{out}.env").read_text()
    assert f"GUARDIAN_ESCALATION_REQUEST_ID={req.request_id}" in env
    assert "GUARDIAN_ESCALATION_MODE=send" in env
    assert "GUARDIAN_ESCALATION_ACTION=recreate" in env


def test_exec_channel_stdout_state_exit_status_and_timeout(tmp_path: Path) -> None:
    says = script(tmp_path / "says", 'echo \'{"state": "done", "detail": "ok"}\'\n')
    fails = script(tmp_path / "fails", 'echo boom >&2; exit 3\n')
    hangs = script(tmp_path / "hangs", 'exec sleep 30\n')
    dl = time.monotonic() + 5
    a = asyncio.run(build_channel(spec(command=(str(says),))).poll("x", dl))
    assert a == Answer(AnswerState.DONE, "ok")
    with pytest.raises(EscalationError, match="exited 3: boom"):
        asyncio.run(build_channel(spec(command=(str(fails),))).send(request(), dl))
    started = time.monotonic()
    with pytest.raises(EscalationError, match="timed out"):
        asyncio.run(build_channel(spec(command=(str(hangs),))).send(
            request(), time.monotonic() + 0.3))
    assert time.monotonic() - started < 3
    with pytest.raises(EscalationError, match="cannot run"):
        asyncio.run(build_channel(spec(command=(str(tmp_path / "none"),))).send(request(), dl))


# ----------------------------------------------------------------------------- xenstore
@pytest.fixture
def fake_xenstore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """xenstore-write / xenstore-read on PATH, storing node values as files."""
    store = tmp_path / "store"
    store.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script(bin_dir / "xenstore-write",
           f'mkdir -p "{store}/$(dirname "$1")" && printf %s "$2" > "{store}/$1"\n')
    script(bin_dir / "xenstore-read",
           f'[ -f "{store}/$1" ] || {{\n'
           '  echo "xenstore-read: couldn\'t read path $1" >&2; exit 1; }\n'
           f'cat "{store}/$1"; echo\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield store


def test_xenstore_channel_writes_the_request_and_reads_dom0s_answer(
        fake_xenstore: Path) -> None:
    ch = build_channel(spec(channel="xenstore", xenstore_client="tools"))
    assert isinstance(ch, XenstoreChannel) and XenstoreChannel.tools_installed()
    req = request()
    dl = time.monotonic() + 5

    async def scenario() -> list[Answer]:
        answers = [await ch.send(req, dl), await ch.poll(req.request_id, dl)]
        node = fake_xenstore / "guardian/answer" / req.request_id
        node.parent.mkdir(parents=True)
        node.write_text('{"state": "accepted", "detail": "queued"}')
        answers.append(await ch.poll(req.request_id, dl))
        return answers

    sent, nothing_yet, accepted = asyncio.run(scenario())
    written = json.loads((fake_xenstore / "data/guardian/escalation" /
                          req.request_id).read_text())
    assert written["request_id"] == req.request_id and written["vm"] == "vm01"
    assert sent.state is AnswerState.SENT and nothing_yet.state is AnswerState.SENT
    assert accepted == Answer(AnswerState.ACCEPTED, "queued")


def test_xenstore_incarnation_from_the_store_else_the_file(
        fake_xenstore: Path, tmp_path: Path) -> None:
    inc = tmp_path / "incarnation"
    inc.write_text("5\n")
    ch = build_channel(spec(channel="xenstore", xenstore_client="tools",
                            incarnation_file=str(inc)))
    dl = time.monotonic() + 5
    assert asyncio.run(ch.incarnation(dl)) == 5
    (fake_xenstore / "data/guardian").mkdir(parents=True)
    (fake_xenstore / "data/guardian/incarnation").write_text("9")   # guest-writable: ignored
    assert asyncio.run(ch.incarnation(dl)) == 5
    (fake_xenstore / "guardian").mkdir(parents=True)
    (fake_xenstore / "guardian/incarnation").write_text("7")        # dom0's node
    assert asyncio.run(ch.incarnation(dl)) == 7


def test_xenstore_channel_without_the_tools_is_a_transient_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    ch = build_channel(spec(channel="xenstore", xenstore_client="tools"))
    with pytest.raises(EscalationError, match="xenstore-utils"):
        asyncio.run(ch.send(request(), time.monotonic() + 5))


def test_xenstore_wire_channel_against_the_stand_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from guardian.xenstore import StandIn

    with StandIn(tmp_path / "xs") as xs:
        domid = xs.create_domain("vm01", "6c1b3f0e-0000-4000-8000-000000000001")
        monkeypatch.setenv("XENSTORED_PATH", str(xs.name_socket("vm01")))
        inc = tmp_path / "incarnation"
        inc.write_text("5\n")
        ch = build_channel(spec(channel="xenstore", incarnation_file=str(inc)))
        assert ch.describe() == "xenstore"
        req = request()
        dl = time.monotonic() + 5
        top = f"/local/domain/{domid}"
        assert asyncio.run(ch.send(req, dl)).state is AnswerState.SENT
        written = xs.daemon.read(f"{top}/data/guardian/escalation/{req.request_id}")
        assert written is not None and json.loads(written)["request_id"] == req.request_id
        assert asyncio.run(ch.poll(req.request_id, dl)).state is AnswerState.SENT
        assert asyncio.run(ch.incarnation(dl)) == 5                 # not published yet
        xs.daemon.write(f"{top}/data/guardian/incarnation", "9")    # forgeable: ignored
        assert asyncio.run(ch.incarnation(dl)) == 5
        xs.daemon.write(f"{top}/guardian/incarnation", "7", ["n0", f"r{domid}"])
        xs.daemon.write(f"{top}/guardian/answer/{req.request_id}",
                        '{"state": "done", "detail": "recreated"}', ["n0", f"r{domid}"])
        assert asyncio.run(ch.incarnation(dl)) == 7
        assert asyncio.run(ch.poll(req.request_id, dl)) == Answer(AnswerState.DONE,
                                                                   "recreated")
        monkeypatch.setenv("XENSTORED_PATH", str(tmp_path / "none"))
        with pytest.raises(EscalationError, match="xenstore"):
            asyncio.run(ch.send(req, dl))


@pytest.mark.skipif(not XenstoreChannel.tools_installed(),
                    reason="xenstore-utils is not installed (apt-get install xenstore-utils)")
def test_xenstore_tools_channel_against_the_stand_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from guardian.xenstore import StandIn

    with StandIn(tmp_path / "xs") as xs:
        domid = xs.create_domain("vm01", "6c1b3f0e-0000-4000-8000-000000000001")
        monkeypatch.setenv("XENSTORED_PATH", str(xs.domain_socket(domid)))
        ch = build_channel(spec(channel="xenstore", xenstore_client="tools",
                                incarnation_file=str(tmp_path / "none")))
        req = request()
        dl = time.monotonic() + 10
        top = f"/local/domain/{domid}"
        assert asyncio.run(ch.send(req, dl)).state is AnswerState.SENT
        assert xs.daemon.read(f"{top}/data/guardian/escalation/{req.request_id}")
        assert asyncio.run(ch.poll(req.request_id, dl)).state is AnswerState.SENT
        assert asyncio.run(ch.incarnation(dl)) is None
        xs.daemon.write(f"{top}/guardian/incarnation", "4", ["n0", f"r{domid}"])
        xs.daemon.write(f"{top}/guardian/answer/{req.request_id}",
                        '{"state": "accepted", "detail": "queued"}', ["n0", f"r{domid}"])
        assert asyncio.run(ch.incarnation(dl)) == 4
        assert asyncio.run(ch.poll(req.request_id, dl)) == Answer(AnswerState.ACCEPTED,
                                                                   "queued")


# ----------------------------------------------------------------------------- identity
def test_vm_uuid_from_the_hypervisor_else_the_config(tmp_path: Path) -> None:
    s = spec(vm_uuid="configured")
    assert vm_uuid(s, tmp_path / "missing") == "configured"
    hv = tmp_path / "uuid"
    hv.write_text("00000000-0000-0000-0000-000000000000\n")
    assert vm_uuid(s, hv) == "configured"
    hv.write_text("6c1b3f0e-1111-4000-8000-000000000001\n")
    assert vm_uuid(s, hv) == "6c1b3f0e-1111-4000-8000-000000000001"


def test_incarnation_file(tmp_path: Path) -> None:
    f = tmp_path / "inc"
    ch = build_channel(spec(command=("true",), incarnation_file=str(f)))
    assert asyncio.run(ch.incarnation(time.monotonic() + 1)) is None
    f.write_text("12\n")
    assert asyncio.run(ch.incarnation(time.monotonic() + 1)) == 12


# ----------------------------------------------------------------------------- registry, config
def test_registry_builtins_module_class_and_unknown() -> None:
    assert load_channel_class("http") is HttpChannel
    assert load_channel_class("exec") is ExecChannel
    assert load_channel_class("xenstore") is XenstoreChannel
    assert load_channel_class("test_escalation:FakeChannel") is FakeChannel
    with pytest.raises(UnknownChannelError, match="unknown escalation channel 'carrier'"):
        load_channel_class("carrier")
    with pytest.raises(UnknownChannelError, match="not a guardian.escalation.Channel"):
        load_channel_class("os:getcwd")


def test_pyproject_publishes_the_builtins() -> None:
    import tomllib

    data = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    eps = data["project"]["entry-points"]["guardian.escalations"]
    assert {n: load_channel_class(v) for n, v in eps.items()} == {
        "http": HttpChannel, "exec": ExecChannel, "xenstore": XenstoreChannel}


def test_config_escalation_section() -> None:
    spec_ = config.loads("""
[escalation]
channel = "http"
vm = "vm07"
vm_uuid = "6c1b3f0e-0000-4000-8000-000000000007"
url = "http://192.0.2.1:8731"
key_file = "/etc/guardian/escalation.key"
timeout = "5s"
retry_max = "2m"
""", "g.toml")
    esc = spec_.escalation
    assert esc is not None and esc.channel == "http" and esc.vm == "vm07"
    assert esc.timeout == 5.0 and esc.retry_max == 120.0 and esc.source == "g.toml"
    assert config.loads("", "g.toml").escalation is None
    default_vm = config.loads('[escalation]\nchannel = "exec"\ncommand = "true"\n', "g.toml")
    assert default_vm.escalation is not None and default_vm.escalation.vm
    assert default_vm.escalation.command == ("true",)


@pytest.mark.parametrize(("text", "message"), [
    ('channel = "carrier"', "g.toml: escalation.channel: unknown escalation channel"),
    ('channel = "http"\nkey_file = "/k"', "g.toml: escalation.url: is required"),
    ('channel = "http"\nurl = "ftp://x"\nkey_file = "/k"', "escalation.url: 'ftp://x' is not"),
    ('channel = "http"\nurl = "http://x:1"', "g.toml: escalation.key_file: is required"),
    ('channel = "exec"', "g.toml: escalation.command: is required"),
    ('channel = "exec"\ncommand = "true"\ncolour = 1', "g.toml: escalation.colour: unknown key"),
    ('channel = "exec"\ncommand = "true"\ntimeout = "0s"', "escalation.timeout: must be"),
    ('channel = "xenstore"\nanswer_path = "x/y"', "escalation.answer_path: must contain"),
    ('channel = "xenstore"\nxenstore_client = "x"', "escalation.xenstore_client:"),
])
def test_config_escalation_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        config.loads("[escalation]\n" + text + "\n", "g.toml")
    assert message in str(info.value)


def test_config_warns_about_an_escalate_rung_without_a_channel() -> None:
    spec_ = config.loads("""
[services.app]
backend = "command"
start_command = ["true"]
ladder = ["escalate"]
""", "g.toml")
    assert any("escalate, but there is no [escalation]" in w for w in spec_.warnings)


def test_finished_requests_are_pruned_after_a_week(tmp_path: Path) -> None:
    esc = escalator(tmp_path, FakeChannel(sends=[Answer(AnswerState.DONE)]), Clock())
    old, fresh = esc.submit(request("a")), esc.submit(request("b"))
    assert old is not None and fresh is not None
    asyncio.run(esc.step(old))
    path = tmp_path / "outbox" / f"{old.request.request_id}.json"
    data = json.loads(path.read_text())
    data["updated"] = time.time() - 8 * 86400
    path.write_text(json.dumps(data))
    again = escalator(tmp_path, FakeChannel(), Clock())
    assert not path.exists()
    assert [e.request.request_id for e in again.outbox.open_entries()] == [
        fresh.request.request_id]
