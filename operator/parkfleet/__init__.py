"""parkfleet: a Kubernetes operator that turns parked cars into GPU inference capacity."""

import os

__all__ = ["__version__"]

__version__ = "0.1.0"

# parkfleet's processes load gRPC and start others (the dev stack, the demo, the tests'
# fixtures). With gRPC's fork support on, a child between fork and exec restarts gRPC's
# poller, whose epoll fd Popen's close_fds has just closed, and aborts (SIGABRT) before
# it ever runs: seen as "epoll_wait error: Bad file descriptor". Nothing here forks a
# process that keeps using gRPC, so it is off unless asked for. Set before gRPC loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
