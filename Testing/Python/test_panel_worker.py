"""The panel's worker process: a real short training run started, watched and stopped like the
panel does it; the kill of a whole process tree; exit reasons; commands and environment."""

import os
import signal
import sys
import textwrap
import time

import pytest

from JCSAugmentLib.panel import worker_process as wpmod
from JCSAugmentLib.panel.monitor import RunMonitor
from JCSAugmentLib.panel.worker_process import (PACKAGE_PARENT, WorkerProcess, describe_exit,
                                                find_python_slicer, parse_predict_log,
                                                predict_command, run_folder_busy, worker_env)
from JCSAugmentLib.run.control import RunLock, pid_alive

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")


def _wait(pred, timeout=60.0, step=0.05):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(step)
    return False


# ----------------------------------------------------------------------------- a real run

@pytest.fixture(scope="module")
def tiny_cases(tmp_path_factory):
    import SimpleITK as sitk
    from JCSAugmentLib.demo_augment import synthetic_case
    d = tmp_path_factory.mktemp("cases")
    out = []
    for i in range(3):
        img, lab, _ = synthetic_case(size=(24, 28, 28), seed=i)
        p = str(d / f"c{i}")
        sitk.WriteImage(img, p + "_img.nrrd")
        sitk.WriteImage(lab, p + "_seg.nrrd")
        out.append({"id": f"c{i}", "images": [p + "_img.nrrd"], "label": p + "_seg.nrrd",
                    "split": ["train", "train", "validation"][i]})
    return out


def test_train_see_progress_and_stop_cooperatively(tiny_cases, tmp_path):
    from JCSAugmentLib.panel.settings import PanelSettings, build_job
    from JCSAugmentLib.run.job import save_job
    run = str(tmp_path / "run")
    settings = PanelSettings(mode="joint", epochs=50, iterations_per_epoch=20, batch_size=4,
                             patch_size=(16, 16, 16), device="cpu", seed=1,
                             output_folder=str(tmp_path))
    job = build_job(tiny_cases, settings)
    job["model"]["base_features"] = 2
    job["training"].update(val_batch_size=2, tea_copies=2, preview_every=0, validate_every=0,
                           checkpoint_every=1000)
    save_job(run, job)

    worker = WorkerProcess(run, python=sys.executable, device=settings.device,
                           env={"OMP_NUM_THREADS": "1"})
    monitor = RunMonitor(run)
    monitor.set_worker(worker)
    assert monitor.poll().state == "idle"  # not started yet
    worker.start()
    assert worker.running and worker.pid
    seen = set()

    def progressed():
        v = monitor.poll()
        seen.add(v.state)
        assert v.state != "failed", (v.error, v.log_tail)
        return v.state == "running" and v.iteration >= 1

    assert _wait(progressed, timeout=180), monitor.poll().log_tail
    assert "starting" in seen
    view = monitor.poll()
    assert view.total == 1000 and view.loss_curves and view.policy is not None
    assert view.message.startswith("Iteration ")
    # the worker previews its first policy: the panel's preview volumes come from it
    from JCSAugmentLib.panel.pictures import preview_volumes
    assert os.path.isfile(view.preview_files["png"])
    vols = preview_volumes(view.preview_files)
    assert vols["foreground original"].ndim == 3 and "background sample 1 label" in vols

    worker.begin_stop(timeout=120)
    assert monitor.poll().state == "stopping"

    def stopped():
        done = worker.poll_stop()
        seen.add(monitor.poll().state)
        return done

    assert _wait(stopped, timeout=120)
    view = monitor.poll()
    assert view.state == "stopped" and view.finished_reason == "stopped", view.log_tail
    assert worker.returncode == 0 and worker.forced is None
    assert view.exit_reason == "the worker exited normally (code 0)"
    assert view.checkpoint and os.path.isfile(view.checkpoint)
    assert os.path.isfile(os.path.join(run, "policy.json"))
    assert view.can_resume and "Resume continues" in view.message
    with open(os.path.join(run, "worker.log"), encoding="utf-8") as f:
        log = f.read()
    assert "===== " in log and " starting: " in log

    again = RunMonitor(run).poll_until_current()  # re-attach after a restart of the GUI
    assert (again.state, again.iteration, again.checkpoint) == ("stopped", view.iteration,
                                                                view.checkpoint)
    assert again.loss_curves == view.loss_curves


# ----------------------------------------------------------------------------- process trees

def _tree_script(tmp_path, leader_exits=False):
    """A child that starts a grandchild; both ignore SIGTERM (like a stuck worker)."""
    pidfile = str(tmp_path / "grandchild.pid")
    path = str(tmp_path / "tree.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(f"""
            import os, signal, subprocess, sys, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            g = subprocess.Popen([sys.executable, "-c",
                                  "import signal, time\\n"
                                  "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
                                  "time.sleep(120)"])
            with open({pidfile!r} + ".tmp", "w") as f:
                f.write(str(g.pid))
            os.replace({pidfile!r} + ".tmp", {pidfile!r})
            print("started grandchild", g.pid, flush=True)
            if {leader_exits!r}:
                sys.exit(0)
            time.sleep(120)
            """))
    return path, pidfile


def _grandchild(pidfile):
    assert _wait(lambda: os.path.exists(pidfile), timeout=30)
    with open(pidfile) as f:
        return int(f.read())


@posix_only
def test_kill_leaves_no_process_of_the_tree_alive(tmp_path):
    script, pidfile = _tree_script(tmp_path)
    w = WorkerProcess.for_command([sys.executable, script], log_path=str(tmp_path / "t.log"))
    w.start()
    grandchild = _grandchild(pidfile)
    assert pid_alive(w.pid) and pid_alive(grandchild)
    w.terminate()  # ignored by both
    time.sleep(0.3)
    assert w.running and pid_alive(grandchild)
    w.kill()
    assert not w.running and not pid_alive(w.pid) and not pid_alive(grandchild)
    assert w.returncode == -signal.SIGKILL
    assert w.exit_reason() == ("the process was killed (SIGKILL) on request; its last "
                               "checkpoint is kept")
    assert "started grandchild" in w.log_tail()


@posix_only
def test_stop_escalates_to_sigkill_and_poll_stop_never_blocks(tmp_path):
    run = str(tmp_path / "run")
    os.makedirs(run)
    script, pidfile = _tree_script(tmp_path)
    w = WorkerProcess.for_command([sys.executable, script], log_path=str(tmp_path / "t.log"),
                                  run_dir=run, what="worker")
    w.start()
    grandchild = _grandchild(pidfile)
    w.begin_stop(timeout=0.3, term_grace=0.3)
    assert os.path.exists(os.path.join(run, "stop")) and w.stop_phase == "requested"
    phases, slowest = [], 0.0
    while True:
        t = time.perf_counter()
        done = w.poll_stop()
        slowest = max(slowest, time.perf_counter() - t)
        phases.append(w.stop_phase)
        if done:
            break
        time.sleep(0.02)
    assert "terminating" in phases and phases[-1] == "done"  # killing: within the last step
    assert not pid_alive(grandchild) and w.forced == "kill"
    assert w.exit_reason() == ("the worker did not stop within 0.3 s and was killed (SIGKILL); "
                               "its last checkpoint is kept")
    assert slowest < 6.0  # the kill step reaps the tree; every other step returns at once


@posix_only
def test_a_launcher_that_exits_first_still_counts_as_running(tmp_path):
    """PythonSlicer is a launcher: its python child may outlive it. The tree is what counts."""
    script, pidfile = _tree_script(tmp_path, leader_exits=True)
    w = WorkerProcess.for_command([sys.executable, script], log_path=str(tmp_path / "t.log"))
    w.start()
    grandchild = _grandchild(pidfile)
    assert _wait(lambda: w.returncode is not None, timeout=30)
    assert w.returncode == 0 and w.running and w.exit_reason() is None
    assert w.stop(timeout=0.2, term_grace=0.2) == 0
    assert not w.running and not pid_alive(grandchild)


def test_start_failure_is_a_sentence(tmp_path):
    w = WorkerProcess.for_command([str(tmp_path / "no-such-python"), "-c", "pass"],
                                  log_path=str(tmp_path / "x.log"))
    with pytest.raises(OSError, match="cannot start"):
        w.start()
    assert not w.running and w.exit_reason() is None


# ----------------------------------------------------------------------------- sentences

def test_describe_exit():
    assert describe_exit(None) is None
    assert describe_exit(0) == "the worker exited normally (code 0)"
    assert describe_exit(1, "ValueError: bad") == "the worker exited with code 1: ValueError: bad"
    assert describe_exit(2, "jcsaugment train: error: x").startswith(
        "the worker exited with code 2 (the job or the run folder was refused): ")
    if os.name != "nt":
        assert describe_exit(-9) == "the worker was killed by signal 9 (out of memory?)"
        assert describe_exit(137) == ("the worker was killed by signal 9 (exit code 137) "
                                      "(out of memory?)")
        assert describe_exit(-11) == "the worker was killed by signal 11 (a crash)"
        assert "did not stop within 30 s and was terminated (SIGTERM)" in describe_exit(
            -15, forced="terminate", timeout=30)


def test_log_tail_and_last_line_cover_only_this_process(tmp_path):
    log = str(tmp_path / "worker.log")
    with open(log, "w") as f:
        f.write("old run: RuntimeError: not this one\n")
    w = WorkerProcess.for_command(
        [sys.executable, "-c", "import sys; print('line 1'); print('[####----] 4/8');"
                               "sys.stderr.write('KeyError: x\\n'); sys.exit(3)"],
        log_path=log)
    w.start()
    assert w.wait(30) == 3
    assert w.log_tail(10) == "line 1\n[####----] 4/8\nKeyError: x"
    assert w.last_line() == "KeyError: x"
    assert w.exit_reason() == "the process exited with code 3: KeyError: x"


# ----------------------------------------------------------------------------- commands, env

def test_worker_env_names_the_gpu_and_finds_the_package():
    env = worker_env("cuda:1", base={"PYTHONPATH": "/x"})
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep) == [PACKAGE_PARENT, "/x"]
    assert os.path.isdir(os.path.join(PACKAGE_PARENT, "JCSAugmentLib"))
    env = worker_env("cuda:1", base={"CUDA_VISIBLE_DEVICES": "4,6"})
    assert env["CUDA_VISIBLE_DEVICES"] == "6"  # the panel listed GPUs under that mask
    with pytest.raises(ValueError, match="lists only 2"):
        worker_env("cuda:2", base={"CUDA_VISIBLE_DEVICES": "4,6"})
    assert "CUDA_VISIBLE_DEVICES" not in worker_env("auto", base={})
    assert "CUDA_VISIBLE_DEVICES" not in worker_env("cpu", base={})


def test_worker_env_lets_idle_openmp_threads_sleep_unless_the_user_chose():
    # the worker shares the cores with Slicer's GUI (threads.py says why)
    assert worker_env("cpu", base={})["OMP_WAIT_POLICY"] == "PASSIVE"
    assert worker_env("cpu", base={"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


def test_train_and_predict_commands(tmp_path):
    w = WorkerProcess(str(tmp_path / "run"), python="/opt/Slicer/bin/PythonSlicer",
                      resume=True)
    assert w.command == ["/opt/Slicer/bin/PythonSlicer", "-m", "JCSAugmentLib", "train",
                         str(tmp_path / "run"), "--resume"]
    assert w.log_path == str(tmp_path / "run" / "worker.log")
    cmd = predict_command(str(tmp_path / "run"), ["/d/a.nrrd", ["/d/b_t1.nrrd", "/d/b_t2.nrrd"]],
                          str(tmp_path / "out"), tea="learned", uncertainty=True, python="py",
                          device="cuda:1")
    assert cmd == ["py", "-m", "JCSAugmentLib", "predict", "--run", str(tmp_path / "run"),
                   "--image", "/d/a.nrrd", "--image", "/d/b_t1.nrrd,/d/b_t2.nrrd",
                   "--out", str(tmp_path / "out"), "--tea", "learned", "--checkpoint", "best",
                   "--uncertainty", "--device", "cuda"]
    with pytest.raises(ValueError):
        predict_command("r", ["a.nrrd"], "o", tea="sometimes")
    from JCSAugmentLib.cli import build_parser  # the command line accepts what we build
    args = build_parser().parse_args(cmd[3:])
    assert args.image == ["/d/a.nrrd", "/d/b_t1.nrrd,/d/b_t2.nrrd"] and args.uncertainty
    # a dataset-folder run's own test split: the same builder (the Slicer logic uses it)
    cmd = predict_command(str(tmp_path / "run"), None, str(tmp_path / "out"), tea="none",
                          python="py", device="auto", split="test")
    assert cmd == ["py", "-m", "JCSAugmentLib", "predict", "--run", str(tmp_path / "run"),
                   "--split", "test", "--out", str(tmp_path / "out"), "--tea", "none",
                   "--checkpoint", "best"]
    assert build_parser().parse_args(cmd[3:]).split == "test"
    with pytest.raises(ValueError, match="not both"):
        predict_command("r", ["a.nrrd"], "o", split="test")
    w = WorkerProcess(str(tmp_path / "run"), python="py", restart=True)
    assert w.command[-1] == "--restart" and build_parser().parse_args(w.command[3:]).restart
    with pytest.raises(ValueError, match="choose one"):
        WorkerProcess(str(tmp_path / "run"), python="py", resume=True, restart=True)


def test_parse_predict_log():
    assert parse_predict_log("predicting a\nwrote /o/a.nrrd and /o/a_unc.nrrd\nwrote /o/b.nrrd\n"
                             ) == [{"prediction": "/o/a.nrrd", "uncertainty": "/o/a_unc.nrrd"},
                                   {"prediction": "/o/b.nrrd"}]


def test_find_python_slicer(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_exe = bindir / "SlicerApp-real"
    fake_exe.write_text("")
    monkeypatch.setattr(sys, "executable", str(fake_exe))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert find_python_slicer() == str(fake_exe)  # no PythonSlicer anywhere: sys.executable
    ps = bindir / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    ps.write_text("#!/bin/sh\n")
    ps.chmod(0o755)
    assert find_python_slicer() == str(ps)


def test_run_folder_busy(tmp_path):
    run = str(tmp_path / "run")
    assert run_folder_busy(run) is None
    with RunLock(run):
        msg = run_folder_busy(run)
        assert msg and f"pid {os.getpid()}" in msg and "stop it first" in msg
    assert run_folder_busy(run) is None


def test_module_has_no_heavy_imports():
    assert "torch" not in vars(wpmod) and "numpy" not in vars(wpmod)
