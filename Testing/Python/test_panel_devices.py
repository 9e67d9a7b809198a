"""Listing GPUs through a short subprocess (never torch in the GUI process)."""

import json
import os
import sys
import time

import pytest

from JCSAugmentLib.panel import devices
from JCSAugmentLib.panel.devices import (DeviceProbe, clear_cache, list_devices,
                                         low_memory_warning, parse_probe_output)

posix_only = pytest.mark.skipif(os.name == "nt", reason="shell-script stand-ins for python")


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_cache()
    yield
    clear_cache()


def fake_python(tmp_path, stdout="", sleep=0, code=0, name="py"):
    """An executable that ignores its arguments and answers like the probe would."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + (f"sleep {sleep}\n" if sleep else "")
                    + f"cat <<'EOF'\n{stdout}\nEOF\nexit {code}\n")
    path.chmod(0o755)
    return str(path)


GPUS = {"torch": "2.4.0", "cuda": "12.1", "mps": False, "error": None, "devices": [
    {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85 * 2 ** 30,
     "capability": [9, 0]},
    {"index": 1, "name": "NVIDIA T400", "memory_bytes": 2 * 2 ** 30, "capability": [7, 5]}]}


@posix_only
def test_gpus_are_listed_after_the_cpu_and_cached(tmp_path):
    py = fake_python(tmp_path, "some warning\n" + json.dumps(GPUS))
    out = list_devices(python=py)
    assert [d["id"] for d in out] == ["cpu", "cuda:0", "cuda:1"]
    assert out[1]["label"] == "GPU 0: NVIDIA H100 80GB HBM3 (85 GB)"
    assert out[1]["memory_gb"] == 85.0 and out[0]["memory_gb"] is None
    os.remove(py)  # cached: the interpreter is not asked again
    assert list_devices(python=py) == out
    assert list_devices(python=py, refresh=True)[0]["id"] == "cpu"  # asked again: gone
    assert low_memory_warning(out[2]) .startswith("GPU 1: NVIDIA T400 (2 GB) has 2 GB")
    assert low_memory_warning(out[1]) is None and low_memory_warning(out[0]) is None


@posix_only
def test_failures_give_the_cpu_with_a_note(tmp_path):
    out = list_devices(python=str(tmp_path / "missing-python"))
    assert out == [{"id": "cpu", "label": "CPU", "memory_gb": None,
                    "note": out[0]["note"]}] and "could not run" in out[0]["note"]
    slow = fake_python(tmp_path, json.dumps(GPUS), sleep=5, name="slow")
    t = time.monotonic()
    out = list_devices(python=slow, timeout=0.5)
    assert time.monotonic() - t < 4 and len(out) == 1 and "within 0.5 s" in out[0]["note"]
    crash = fake_python(tmp_path, "", code=3, name="crash")
    assert "exit code 3" in list_devices(python=crash)[0]["note"]


def test_parse_probe_output_notes():
    no_torch = json.dumps({"torch": None, "cuda": None, "devices": [], "mps": False,
                           "error": "ModuleNotFoundError: No module named 'torch'"})
    [cpu] = parse_probe_output(no_torch)
    assert "PyTorch is not installed" in cpu["note"]
    mps = json.dumps({"torch": "2.4", "cuda": None, "devices": [], "mps": True, "error": None})
    [cpu] = parse_probe_output(mps)
    assert "a CPU-only build" in cpu["note"] and "Apple MPS" in cpu["note"]


def test_the_real_probe_and_the_non_blocking_poll():
    probe = DeviceProbe(sys.executable, timeout=120).start()
    polls = 0
    while probe.poll() is None:
        polls += 1
        time.sleep(0.05)
    assert probe.done and probe.result[0]["id"] == "cpu"
    assert "torch" not in devices.__dict__  # the caller never imported it
    import torch  # noqa: E402 - the test's own comparison
    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert len(probe.result) == 1 + expected
    assert DeviceProbe(sys.executable).poll() == probe.result  # cached: at once
