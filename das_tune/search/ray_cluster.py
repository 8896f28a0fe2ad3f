"""Connecting to Ray: a local instance on 127.0.0.1, or an existing cluster at ``ray.address``.

A local instance (no address) and a cluster reached at a loopback address keep every Ray process
on 127.0.0.1. For a cluster elsewhere, the driver takes the address of this machine's Ray node.
An address that does not answer is bad input, found before anything is written.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from das_tune.errors import UserError
from das_tune.spec.study import RaySpec

LOOPBACK = "127.0.0.1"
WORKER_NICENESS = "RAY_worker_niceness"  # the raylet's nice increment for the workers it starts
QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    # CheckpointConfig(num_to_keep=1) snapshots the experiment at every report, on purpose.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
CONNECT_TIMEOUT_S = 5


def host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port``; None for ``auto``."""
    if address == "auto":
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--address {address!r}: expected 'auto' or HOST:PORT of a Ray cluster's head, e.g. 127.0.0.1:6379")
    return host, int(port)


def check_reachable(address: str) -> None:
    """A cluster at ``address`` answers; otherwise one clear line (Ray itself retries for minutes)."""
    target = host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(
            f"--address {address}: no Ray cluster answers there ({reason}); start one with `ray start --head` or fix the address"
        ) from None


def driver_ip(address: str | None) -> str | None:
    """The driver's node address: loopback for a local instance or a loopback cluster, else Ray's choice."""
    target = None if address is None else host_port(address)
    if address is None or (target and target[0] in (LOOPBACK, "localhost")):
        return LOOPBACK
    return None


@contextmanager
def ray_session(spec: RaySpec, num_cpus: int | None = None) -> Iterator[None]:
    """Ray connected for the block (a local instance of ``num_cpus`` if no address); an already
    connected Ray is used as it is and left connected."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        yield
        return
    environment = dict(os.environ)
    ip = driver_ip(spec.address)
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "_node_ip_address": ip}
    if ip == LOOPBACK and _loopback_interface():  # gloo (data-parallel workers) binds by interface
        quiet["runtime_env"] = {"env_vars": {"GLOO_SOCKET_IFNAME": _loopback_interface()}}
    if spec.address:
        check_reachable(spec.address)
        try:
            ray.init(address=spec.address, **quiet)
        except ConnectionError as err:
            raise UserError(f"--address {spec.address}: {str(err).splitlines()[0]}") from None
    else:
        cpus = num_cpus or max(1, math.ceil(spec.cpus_per_trial * spec.max_concurrent_trials))
        # Ray starts workers 15 nice levels below the driver, per thread: beside any other work on the machine the
        # trials' training threads then starve (measured: 6 % of a core beside four busy processes, 100 % alone)
        os.environ.setdefault(WORKER_NICENESS, "0")
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)  # "local": never another Ray found on this machine
    try:
        yield
    finally:
        ray.shutdown()
        _restore_environment(environment)


def _restore_environment(saved: dict[str, str]) -> None:
    """Undo what ``ray.init`` wrote into this process's environment (e.g. ``RAY_AUTH_MODE=token`` of the
    instance just shut down), which would otherwise reach the next Ray session, and the processes and
    clusters started after it, of this same process."""
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()]
    return next((name for name in ("lo", "lo0") if name in names), None)


def current_node() -> dict[str, str]:
    """Where the calling task or actor runs: its node's id and address (recorded on trials)."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}
