"""The README's library example runs and prints what the README says it prints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from unit_helpers import free_port

README = Path(__file__).resolve().parents[2] / "README.md"


def test_library_example(tmp_path: Path) -> None:
    text = README.read_text()
    section = text.split("## As a library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    port = str(free_port())
    pidfile = tmp_path / "web.pid"
    src = code.group(1).replace("8765", port).replace("/tmp/web.pid", str(pidfile))
    script = tmp_path / "example.py"
    script.write_text(src)
    try:
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=30, cwd=tmp_path)
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "web up OK 1", (out.stdout, out.stderr)
