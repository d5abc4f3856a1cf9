"""``guardian status``'s table mentions open escalations."""

from guardian.cli import format_status_table


def test_status_table_shows_open_escalations() -> None:
    status = {
        "version": "0.1.0", "pid": 1, "uptime": 5.0, "services": [],
        "escalations": [{"request_id": "r-1", "service": "apache2", "action": "recreate",
                         "incarnation": 3, "state": "sent", "attempts": 2,
                         "next_retry": 4.0, "detail": "connection refused"}],
    }
    text = format_status_table(status)
    assert ("escalation r-1: recreate for apache2 (incarnation 3): SENT after 2 attempt(s), "
            "next attempt in 4.0s: connection refused") in text, text
