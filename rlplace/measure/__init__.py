"""Run placements for real and time them; calibrate the cost model on the actual devices.

Modules (each has one job):
    program     the model's forward pass as runnable ATen nodes (traced like capture);
    plan        per-device segments and the message schedule of one training step;
    assign      a captured-graph placement -> a device per executor node;
    executor    forward, backward and optimizer step of a placed model (one process);
    distributed one rank per device under torch.distributed; local launcher, torchrun entry;
    recipe      how every process rebuilds the same model;
    session     capture + assign + measure + simulate for many placements;
    calibrate   device and link profiles, `apply_profile`;
    reward      the ``measured`` reward source of the environment;
    cli         handlers of ``rlplace measure`` and ``rlplace calibrate``;
    models      small reference models for tests and the fidelity benchmark.
"""
