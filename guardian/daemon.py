"""guardiand: the daemon around ``Supervisor`` (config files, logging, signals)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from checks import ConfigError, ConfigErrors

from . import config as config_mod
from ._model import GuardianSpec
from ._supervisor import Supervisor

log = logging.getLogger("guardian")


def setup_logging(level: str, target: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if target == "journal":
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="guardiand")
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%H:%M:%S"
        if target == "stderr" else None))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # one line per probe connection is noise even at debug level
    for noisy in ("urllib3", "requests"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


_config_path: dict[int, Path | None] = {}


def reload_from_disk(sup: Supervisor) -> str | None:
    """Re-read the config the daemon was started with; keep the old one on error."""
    if id(sup) not in _config_path:
        # built through the library API: reading the default file would swap in
        # a configuration this Supervisor never had
        msg = ("reload refused: this guardian was not started from a configuration file "
               "(library use: call Supervisor.reload(spec))")
        log.error("%s", msg)
        return msg
    path = _config_path[id(sup)]
    try:
        spec = config_mod.load(path)
    except (ConfigErrors, ConfigError) as exc:
        msg = "reload refused, the running configuration stays:\n" + config_mod.format_errors(exc)
        log.error("%s", msg)
        sup.last_reload_error = msg
        return msg
    for w in spec.warnings:
        log.warning("config: %s", w)
    sup.reload(spec)
    sup.last_reload_error = None
    log.info("configuration reloaded from %s", ", ".join(spec.sources))
    return None


async def serve(spec: GuardianSpec, path: Path | None) -> None:
    sup = Supervisor(spec)
    _config_path[id(sup)] = path
    loop = asyncio.get_running_loop()
    # signal handlers only enqueue work for the loop
    loop.add_signal_handler(signal.SIGTERM, sup.stop)
    loop.add_signal_handler(signal.SIGINT, sup.stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.call_soon(reload_from_disk, sup))
    log.info("guardiand starting: %d service(s), control socket %s",
             len(spec.services), spec.control_socket)
    try:
        await sup.run()
    finally:
        _config_path.pop(id(sup), None)
    log.info("guardiand stopped")


def run(path: Path | None) -> int:
    try:
        spec = config_mod.load(path)
    except (ConfigErrors, ConfigError) as exc:
        print(config_mod.format_errors(exc), file=sys.stderr)
        print("guardiand: refusing to start with a broken configuration", file=sys.stderr)
        return 2
    setup_logging(spec.log_level, spec.log_target)
    for w in spec.warnings:
        log.warning("config: %s", w)
    try:
        asyncio.run(serve(spec, path))
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    return 0
