"""guardian: a high-availability supervisor that runs inside each Xen guest.

Use as a library::

    import asyncio, guardian

    spec = guardian.config.loads(TOML_TEXT)        # or build ServiceSpec objects by hand
    sup = guardian.Supervisor(spec, control=False)
    asyncio.run(sup.run())                          # sup.stop() ends it

The public names are listed in ``__all__``; everything in ``_modules`` is private.
"""

from __future__ import annotations

from . import config
from ._machine import Machine
from ._model import CheckSpec, GuardianSpec, LadderStep, RestartPolicy, ServiceSpec
from ._states import LadderAction, Mode, ServiceState
from ._supervisor import Supervisor

__version__ = "0.1.0"

__all__ = [
    "CheckSpec",
    "GuardianSpec",
    "LadderAction",
    "LadderStep",
    "Machine",
    "Mode",
    "RestartPolicy",
    "ServiceSpec",
    "ServiceState",
    "Supervisor",
    "__version__",
    "config",
]
