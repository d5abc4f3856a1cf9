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
'''
