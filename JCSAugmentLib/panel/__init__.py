"""The Slicer panel's logic, free of Qt and of Slicer: everything the panel shows is computed here
and the module file only binds it to widgets.

- :mod:`.cases`: pairing volumes with label maps by name, automatic splits, checks in sentences.
- :mod:`.settings`: the panel's training settings and the ``job.json`` they make.
- :mod:`.monitor`: :class:`~.monitor.RunMonitor` turns a run folder (events, status, the worker
  process) into a :class:`~.monitor.ViewState`, incrementally, on a GUI timer.
- :mod:`.worker_process`: the background worker (``PythonSlicer -m JCSAugmentLib train``), its
  log, cooperative stop and the kill of its whole process tree.
- :mod:`.devices`: the GPUs a worker could use, asked of a short subprocess (never of torch in
  the GUI process).
- :mod:`.pictures`: policy pie charts, curves and preview volumes (matplotlib / numpy / torch
  imported inside the functions only).

Importing this package imports nothing; ``monitor``, ``worker_process``, ``cases``, ``settings``,
``devices`` and ``pictures`` import neither torch nor numpy at import time (they run in
Slicer's GUI process).

How a module drives them (a sketch; ``qt`` only in the module)::

    from JCSAugmentLib.panel import cases, settings, monitor, worker_process, devices
    problems = cases.check_cases(rows, mode=s.mode)               # show, disable Train
    run_dir = settings.new_run_dir(s.output_folder)
    case_dicts = slicer_scene.export_cases(rows, os.path.join(run_dir, "inputs"))
    save_job(run_dir, settings.build_job(case_dicts, s))          # ValueError -> show it
    worker = worker_process.WorkerProcess(run_dir, device=s.device).start()
    mon = monitor.RunMonitor(run_dir); mon.set_worker(worker)
    timer.timeout.connect(tick); timer.start(500)

    def tick():
        v = mon.poll()                # < 1 ms when nothing is new; never blocks
        if worker.stop_phase not in (None, "done"):
            worker.poll_stop()        # after Cancel: worker.begin_stop(timeout=30)
        bind(v)                       # progress bar (v.fraction, v.progress_text), label
                                      # (v.message), curves if v.curves_changed, policy
                                      # pictures if v.policy_changed (rate-limit), preview if
                                      # v.preview_changed, error box (v.error, v.traceback,
                                      # v.exit_reason, v.log_tail), buttons (v.busy,
                                      # v.can_stop, v.can_resume)
        if not v.busy and not v.catching_up: timer.stop()   # or keep a slow timer
"""
