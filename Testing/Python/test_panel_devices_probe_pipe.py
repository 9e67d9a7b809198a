"""The device probe never hangs the GUI on a launcher that exits while a child it started still
holds the probe's output pipe (JCSAugmentLib/panel/devices.py, DeviceProbe.poll)."""

import os
import stat
import sys
import time

import pytest

from JCSAugmentLib.panel.devices import DeviceProbe


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell launcher")
def test_probe_whose_child_holds_the_pipe_ends(tmp_path):
    launcher = tmp_path / "launcher.sh"
    launcher.write_text("#!/bin/sh\nsleep 30 &\nexit 0\n")  # the child inherits stdout
    os.chmod(launcher, os.stat(launcher).st_mode | stat.S_IEXEC)
    probe = DeviceProbe(python=str(launcher), timeout=20.0).start()
    result = None
    end = time.monotonic() + 15
    while result is None and time.monotonic() < end:
        result = probe.poll()
        time.sleep(0.05)
    assert result is not None, "the probe never answered"
    assert [d["id"] for d in result] == ["cpu"]
    assert "holding its output" in result[0].get("note", "")
