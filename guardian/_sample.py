"""The commented sample configuration printed by ``guardian sample-config``."""

SAMPLE_CONFIG = '''\
# guardian.toml -- guardian supervises Apache, BIND and Exim inside this guest.
#
# Files: /etc/guardian/guardian.toml, then /etc/guardian/conf.d/*.toml in sorted
# order.  Check with `guardian validate`; apply with `systemctl reload guardian`
# (SIGHUP): services whose configuration did not change keep their state.
# Durations: "250ms", "2s", "5m", "1h" (a bare number is seconds).

[guardian]
control_socket = "/run/guardian/control.sock"   # root-only; `guardian status` reads it
state_dir = "/var/lib/guardian"
log_level = "info"                  # debug | info | warning | error
log_target = "stderr"               # stderr | journal
# alert_command = ["/usr/local/sbin/page-oncall"]   # run by the ladder's "alert" rung
hook_timeout = "30s"

# How guardian reaches the service manager.  supervisord: XML-RPC over its unix
# socket, plus its event listener so a crash is acted on at once.  Other
# backends: "systemd" (systemctl), "lsb" (/etc/init.d scripts), "command".
[backends.supervisord]
url = "unix:///run/supervisor.sock"

# ---------------------------------------------------------------- web
[services.apache2]
backend = "supervisord"
unit = "apache2"                    # the supervisord program name
rise = 2                            # consecutive OK verdicts to count as up
fall = 2                            # consecutive CRITICAL verdicts to count as down
start_grace = "5s"                  # a restarted service gets this long to come up
# Once the restart budget is spent, these run in order; then guardian keeps
# probing, shows CRITICAL, retries slowly and recovers by itself.
ladder = ["alert"]                  # also: "failover", "escalate", {action="exec", command=[...]}

[services.apache2.restart]
budget = 3                          # at most 3 restarts ...
window = "5m"                       # ... within 5 minutes
backoff = "1s"                      # first restart at once, then 1s, 2s, 4s ... (+/- jitter)
backoff_max = "30s"
jitter = 0.1
timeout = "15s"                     # one restart call
exhausted_retry = "1m"              # after the ladder: one slow retry a minute

[[services.apache2.checks]]
type = "http"
url = "http://127.0.0.1/"
expect_status = [200]
interval = "1s"
timeout = "1s"

# ---------------------------------------------------------------- DNS
[services.named]
backend = "supervisord"
unit = "named"
start_grace = "5s"
ladder = ["alert"]

[[services.named.checks]]
type = "dns"
server = "127.0.0.1"
qname = "localhost"                 # Debian's stock BIND serves this zone authoritatively
rdtype = "A"
expect = ["127.0.0.1"]
require_aa = true
interval = "1s"
timeout = "1s"

# ---------------------------------------------------------------- mail
[services.exim4]
backend = "supervisord"
unit = "exim4"
# Exim resolves names through this guest's own BIND (resolv.conf -> 127.0.0.1):
# while named is down or hung, Exim's greeting waits on DNS too.  "requires"
# marks exim4 "blocked by dependency" then instead of restarting it for nothing,
# and starts it after named.
requires = ["named"]
start_grace = "5s"
ladder = ["alert"]

[[services.exim4.checks]]
type = "smtp"
host = "127.0.0.1"
port = 25
expect_banner_code = 220
interval = "1s"
timeout = "1s"

# ---------------------------------------------------------------- IP failover
# The service address (VIP) on one of two VMs at a time, moved when this VM, its
# host or a tracked service fails.  Same file on both VMs but for node, priority
# and the paths.  Key file: `openssl rand -hex 32`, one line "1 <hex> send",
# mode 0600, the same on both VMs (rotation: see `pydoc ipfailover._wire`).
#
# [failover]
# node = "vm01"                        # this VM (default: the hostname)
# key_file = "/etc/guardian/failover.key"
# port = 694                           # UDP, Heartbeat's port
#
# [failover.groups.web]
# peer = "vm02"
# priority = 150                       # higher wins; equal: the lower node name
# interface = "eth0"                   # where the VIPs live
# vips = ["192.0.2.100/24"]            # also IPv6: "2001:db8::100/64"
# paths = [{ local = "192.0.2.11", peer = "192.0.2.12" }]   # heartbeats; add a second
# interval = "100ms"                   # heartbeat interval; death seen in ~0.11-0.21 s
# lease = "3s"                         # a dead or hung daemon loses the VIPs after this
# preempt = false                      # take the VIPs back when healthy again?
# init_dead = "2s"                     # listen this long at start before taking over
# services = ["apache2"]               # their "failover" ladder rung yields the VIPs
# cold = []                            # started on takeover, stopped on release
# ping = []                            # e.g. ["192.0.2.1"]: yield if only we lose it
# notify = []                          # e.g. ["/usr/local/sbin/failover-hook"]
'''
