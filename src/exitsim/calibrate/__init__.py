"""Measuring the host and fitting the model to measurements, then checking the model
against them.

The model's costs are mostly assumptions until something real is timed. This layer
times what it can on the machine it runs on and sets the cost keys those timings
determine, each with a source that says how, so that the rest stay visibly assumed:

- ``host``: microbenchmarks of this Linux host (fork, exit, exec, page faults, the
  teardown of an exiting address space), run in a bare interpreter of their own;
- ``measured``: their samples as figures (medians, spreads, slopes per page);
- ``micro``: the same benchmarks run in the model;
- ``hostprofile``: the ``linux-host`` cost profile fitted to the figures;
- ``hostcheck``: the model with a profile set beside the host, figure by figure;
- ``validate``: a captured real build replayed in the model, against its captures;
- ``fit``: the model's free cost multipliers fitted to published build profiles.

Nothing here runs inside a simulation: it sits above the model and calls it.
"""
