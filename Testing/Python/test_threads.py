"""The thread policy (JCSAugmentLib/threads.py): what it sets, where it is applied."""

import json
import os
import subprocess
import sys

import pytest
import torch

from JCSAugmentLib import threads
from JCSAugmentLib.threads import (NUM_THREADS_VARIABLE, apply_thread_policy,
                                   requested_threads, thread_environment)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_subprocess_environment_gets_the_passive_wait_policy():
    env = thread_environment({"PATH": "/bin"})
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["PATH"] == "/bin"
    # the user's own choice wins
    assert thread_environment({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


def test_before_torch_is_imported_the_policy_takes_effect():
    code = ("import sys; from JCSAugmentLib.threads import apply_thread_policy; "
            "import os, json; p = apply_thread_policy(); assert 'torch' in sys.modules; "
            "import torch; print(json.dumps([p.wait_policy, p.wait_policy_effective, "
            "p.num_threads, torch.get_num_threads(), os.environ['OMP_WAIT_POLICY']]))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env[NUM_THREADS_VARIABLE] = "1"
    env["PYTHONPATH"] = ROOT
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == ["PASSIVE", True, 1, 1, "PASSIVE"]


def test_after_torch_is_imported_it_says_the_wait_policy_came_too_late():
    env = {}
    p = apply_thread_policy(environ=env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and p.wait_policy == "PASSIVE"
    assert p.wait_policy_effective is False and p.num_threads == torch.get_num_threads()
    # a second call does not take its own late setting for the user's
    assert apply_thread_policy(environ=env).wait_policy_effective is False
    # set by whoever started the process: libgomp read it at torch's import
    assert apply_thread_policy(environ={"OMP_WAIT_POLICY": "PASSIVE"}).wait_policy_effective


def test_the_thread_count_comes_from_the_variable_or_the_call():
    before = torch.get_num_threads()
    try:
        assert apply_thread_policy(environ={NUM_THREADS_VARIABLE: "1"}).num_threads == 1
        assert torch.get_num_threads() == 1
        assert apply_thread_policy(num_threads=2, environ={}).num_threads == 2
    finally:
        torch.set_num_threads(before)
    assert requested_threads({}) is None
    for bad in ("0", "two", "-1", "1.5"):
        with pytest.raises(ValueError, match=NUM_THREADS_VARIABLE):
            requested_threads({NUM_THREADS_VARIABLE: bad})


def test_the_worker_applies_the_policy_at_start(tmp_path, monkeypatch):
    from JCSAugmentLib.train.worker import run_worker
    monkeypatch.setenv("OMP_WAIT_POLICY", "unset-by-test")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv(NUM_THREADS_VARIABLE, "1")
    monkeypatch.setattr(threads, "_SET_TOO_LATE", set())
    before = torch.get_num_threads()
    try:
        code = run_worker(str(tmp_path / "no-such-run"), quiet=True,
                          stream=open(os.devnull, "w"))
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # what its subprocesses inherit
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert code != 0  # refused: there is no such run
