"""Many runs: a sweep's spec, the store its results go into, and the pools that run
them (a local process pool, or a dask.distributed cluster). Reads Results only."""
