"""Experiments, many runs at once: a sweep's spec, the store its results go into,
the pools that run them (a local process pool, or a dask.distributed cluster), the
report and the sensitivity analysis. Reads Results only.

This is design.md's ``sweep/`` layer under another name, so that ``exitsim.sweep``
can be the API's function (``from exitsim import sweep``) without a package of the
same name shadowing it (docs/experiments.md).
"""
