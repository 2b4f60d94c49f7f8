"""exitsim: simulate and check how a multiprocessor kernel tears down the memory of an
exiting process. The Python API (docs/api.md)::

    from exitsim import SimConfig, compare, load_workload, simulate, sweep, to_frame
"""

from exitsim.api import Workload, compare, load_workload, simulate, sweep, to_frame
from exitsim.sim import SimConfig

__all__ = ["SimConfig", "Workload", "compare", "load_workload", "simulate", "sweep", "to_frame"]
