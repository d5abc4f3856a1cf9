"""XenStore: the wire protocol, a small synchronous client, and a stand-in xenstored.

>>> from guardian.xenstore import Client
>>> with Client() as xs:                      # $XENSTORED_PATH, the socket, or xenbus
...     xs.write("data/guardian/hello", "1")  # relative to /local/domain/<domid>

``StandIn`` (``guardian.xenstore.standin``) serves the same protocol on unix
sockets, one for dom0 and one per guest domain, with XenStore's permissions,
watches, transactions and per-domain quotas; the real ``xenstore-*`` tools work
against it.
"""

from ._client import DEFAULT_SOCKET, XENBUS_DEVICE, Client, default_path
from ._daemon import SPECIAL, Connection, Daemon, Node, Quota, domain_path
from ._wire import (
    ERROR_NAMES,
    PAYLOAD_MAX,
    Access,
    Message,
    Op,
    Perm,
    ProtocolError,
    XenstoreError,
    format_perms,
    parse_perms,
)
from .standin import StandIn

__all__ = [
    "DEFAULT_SOCKET", "ERROR_NAMES", "PAYLOAD_MAX", "SPECIAL", "XENBUS_DEVICE", "Access",
    "Client", "Connection", "Daemon", "Message", "Node", "Op", "Perm", "ProtocolError",
    "Quota", "StandIn", "XenstoreError", "default_path", "domain_path", "format_perms",
    "parse_perms",
]
