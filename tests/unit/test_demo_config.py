"""The demo's escalation scene runs the shipped sample config plus only what escalation
needs, and shows exactly those changes."""

from __future__ import annotations

import difflib
from pathlib import Path

from guardian._sample import SAMPLE_CONFIG
from guardian._states import LadderAction
from guardian.config import loads
from guardian.hostd._config import load as load_hostd
from guardian.lab.demo import ESCALATION_TABLE, HOSTD_TOML, escalation_config


def test_escalation_config_is_the_sample_plus_the_shown_changes() -> None:
    text, shown = escalation_config()
    changed = [ln for ln in difflib.ndiff(SAMPLE_CONFIG.splitlines(), text.splitlines())
               if ln[:2] in ("- ", "+ ") and ln[2:].strip()]
    # the same lines, in the same order, as the demo prints them (table names aside)
    assert [ln[:2] + ln[2:].strip() for ln in changed] == \
        [ln for ln in shown if not ln.startswith("  [")]
    assert shown[:3] == ["  [services.apache2]", '- ladder = ["alert"]'
                         '                  # also: "failover", "escalate", '
                         '{action="exec", command=[...]}',
                         '+ ladder = ["escalate"]  # demo (shipped: ["alert"])']
    spec = loads(text)
    apache = spec.services["apache2"]
    assert [s.action for s in apache.ladder] == [LadderAction.ESCALATE]
    assert apache.restart.budget == 1
    assert spec.escalation is not None and spec.escalation.channel == "http"
    # everything else as shipped
    sample = loads(SAMPLE_CONFIG)
    assert spec.services["named"] == sample.services["named"]
    assert spec.services["exim4"] == sample.services["exim4"]
    assert apache.checks == sample.services["apache2"].checks
    assert ESCALATION_TABLE.splitlines()[0] == "[escalation]"


def test_hostd_config_of_the_scene_parses(tmp_path: Path) -> None:
    path = tmp_path / "hostd.toml"
    path.write_text(HOSTD_TOML.format(workdir=tmp_path))
    spec = load_hostd(path, load_keys=False)
    assert spec.vms["vm01"].driver == "lab"
    assert spec.state_dir == tmp_path / "hostd"
    assert spec.policy.max_actions == 3 and spec.policy.min_interval == 600
