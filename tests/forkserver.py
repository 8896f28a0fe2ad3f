"""A fork server for the tests' CLI processes (tests only).

Most of the suite's time was interpreters importing torch and transformers again for every ``das-tune``
subprocess (7 s of CPU each on CI's cores, most of a tiny run). The server imports das-tune and its
dependencies once; every run is then a process forked from it: its own pid, session, working folder,
environment, umask, stdin/stdout/stderr and exit status, as ``python -m das_tune.cli ARGS`` would have.

    python tests/forkserver.py serve SOCKET             the server (conftest.py starts one per xdist worker)
    python -S tests/forkserver.py SOCKET -m MODULE ARGS  the client, in place of ``python -m MODULE ARGS``
    python -S tests/forkserver.py SOCKET SCRIPT ARGS     the client, in place of ``python SCRIPT ARGS``

The client is a bare interpreter (``-S``: no site imports, ~20 ms) that hands its own file descriptors,
folder and environment to the server and exits as the forked run does: with its code, or killed by its
signal. SIGINT, SIGTERM and SIGHUP sent to the client are passed on; if the client dies otherwise (a
SIGKILL), the run's process group is killed with it. Without a server the client becomes a fresh
interpreter (``exec``), so a command line built for the server always works.

What a fork cannot reproduce stays with fresh interpreters: tests of what the CLI imports, of import-time
warnings (the server refuses to start if its imports warn), and of processes killed from outside.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys

HEADER = struct.Struct("!I")


# -- the client -------------------------------------------------------------------------------------------


def client(path: str, argv: list[str]) -> None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        os.execv(sys.executable, [sys.executable, *argv])
    umask = os.umask(0)
    os.umask(umask)
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask,
                          "client": os.getpid()}).encode()
    socket.send_fds(conn, [HEADER.pack(len(request))], [0, 1, 2])
    conn.sendall(request)
    reader = conn.makefile("r")
    pid = int(reader.readline())
    for forwarded in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(forwarded, lambda signum, frame: os.kill(pid, signum))
    code = int(reader.readline())
    if code < 0:  # killed by a signal: so is the client
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


# -- the server -------------------------------------------------------------------------------------------


def preload() -> None:
    """Import what a CLI run imports, in the environment the CLI sets before its imports; refuse (exit 1)
    if an import warns, as a fork would hide the warning."""
    import importlib
    import pkgutil
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import das_tune
        from das_tune import cli

        cli._quiet_libraries()
        for module in pkgutil.walk_packages(das_tune.__path__, "das_tune."):
            importlib.import_module(module.name)
        from transformers import BertModel  # noqa: F401
    if caught:
        sys.exit(f"forkserver: imports warned, so forks would hide it: {caught[0].message}")


def serve(path: str) -> None:
    import selectors

    preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(os.pidfd_open(os.getppid()), selectors.EVENT_READ, "parent")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in selector.select():
            if key.data == "parent":  # the test process is gone: so is its server
                with contextlib.suppress(FileNotFoundError):  # the test process may have removed it
                    os.unlink(path)
                return
            if key.data is None:
                conn, _ = listener.accept()
                try:
                    pid = spawn(listener, conn)
                except (OSError, ValueError):  # a client that died before its request was whole
                    conn.close()
                    continue
                selector.register(os.pidfd_open(pid), selectors.EVENT_READ, (pid, conn))
            else:
                pid, conn = key.data
                selector.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                with conn, contextlib.suppress(OSError):  # a client killed meanwhile hears nothing
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())


def spawn(listener: socket.socket, conn: socket.socket) -> int:
    header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    (size,) = HEADER.unpack(header)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("the client is gone")
        body += chunk
    request = json.loads(body)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            listener.close()
            code = child(request, fds)
        finally:
            if code < 0:
                signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
            os._exit(code)
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):  # the client may already be gone; its run dies with it (_die_with)
        conn.sendall(f"{pid}\n".encode())
    return pid


def child(request: dict, fds: list[int]) -> int:
    os.setsid()  # its own process group: a "killgroup" kills the run and what it started, not the server
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(request["umask"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _die_with(request["client"])
    return run(request["argv"])


def _die_with(client_pid: int) -> None:
    """Kill this run's process group when the client dies (it was SIGKILLed: nothing to pass on)."""
    import select
    import threading

    pidfd = os.pidfd_open(client_pid)

    def watch() -> None:
        select.select([pidfd], [], [])
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def run(argv: list[str]) -> int:
    """Run ``python ARGV`` in this process and return its exit code, as the interpreter would."""
    import atexit
    import runpy
    import threading
    import traceback

    try:
        try:
            if argv[0] == "-m":
                sys.argv, sys.path[0] = [argv[1], *argv[2:]], os.getcwd()
                sys.modules.pop(argv[1], None)  # as in a fresh interpreter: the module runs as __main__ only
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv, sys.path[0] = list(argv), os.path.dirname(os.path.abspath(argv[0]))
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as exit:
            code = _exit_code(exit.code)
        except KeyboardInterrupt:  # the interpreter prints it and dies of SIGINT
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
        threading._shutdown()  # as at interpreter exit: join the non-daemon threads, then the atexit calls
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
    return code


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        client(sys.argv[1], sys.argv[2:])
