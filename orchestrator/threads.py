"""Running the numerical work on one thread.

The models here are small (GPs on a few hundred rows): threads gain nothing, and on a loaded 2-core machine
their spin-waiting made fits and acquisition optimization 10-30x slower (measured: a proposal on 14
points took 0.35 s on one thread and 6 s on two while another process kept the cores busy).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run BLAS and torch on one thread inside the block, restoring the caller's settings afterwards.

    Measured in the simulators too: a suzuki GP fit took 0.4 s on one thread vs 8 s on two.
    """
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits  # installed with scikit-learn, which gpytorch requires
        except ImportError:  # pragma: no cover - only slower without it
            pass
        else:
            stack.enter_context(threadpool_limits(limits=1))
        torch = sys.modules.get("torch")  # only if already imported: the perovskite model never needs torch
        if torch is not None:
            previous = torch.get_num_threads()
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, previous)
        yield
