"""The search executors (one-shot supernet, Ray Tune trials, data-parallel one-shot)."""

import os

# Ray replaces a loopback node address (127.0.0.1) by this machine's first non-loopback one unless
# this is "0" (``ray._private.services.resolve_ip_for_localhost``); it must be set before Ray is
# imported. das-tune always tells Ray the driver's address, so a real cluster is not affected.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
