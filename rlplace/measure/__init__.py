"""Run placements for real and time them; calibrate the cost model on the actual devices.

Modules (each has one job):
    program     the model's forward pass as runnable ATen nodes (traced like capture);
    plan        per-device segments and the message schedule of one training step;
    assign      a captured-graph placement -> a device per executor node;
    executor    forward, backward and optimizer step of a placed model (one process);
    ranks       the rank side: job, point-to-point transport, timed (and traced) steps;
    launch      start local ranks, watch them, kill and reap them (`MeasureFailure`);
    distributed the process entry point of a rank (measure or calibrate; torchrun uses it);
    timeline    spans of a traced step per rank, merged beside the simulated schedule;
    awake       idle-priority spinners that keep cores from halting (when the profile says so);
    recipe      how every process rebuilds the same model;
    session     capture + assign + measure + simulate for many placements;
    calibrate   measures device and link profiles (the `rlplace.profile.Profile` itself is torch-free);
    opprofile   a model's own per-op times, timed in isolation and corrected;
    reward      the ``measured`` reward source of the environment;
    cli         handlers of ``rlplace measure`` and ``rlplace calibrate``;
    models      small reference models for tests and the fidelity benchmark.
"""
