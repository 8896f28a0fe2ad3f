"""The tests' fork server (tests/forkserver.py) runs a command line as ``python`` would: its own process,
folder, environment, umask, streams, exit code and death, and nothing left behind when its caller is killed."""

import json
import os
import signal
import subprocess
import time

import conftest
from conftest import python

PROBE = """
import json, os, sys
umask = os.umask(0)
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": os.environ.get("PROBE"), "umask": umask,
                  "ppid": os.getppid(), "session": os.getsid(0) == os.getpid(), "name": __name__,
                  "path0": sys.path[0]}))
print("to stderr", file=sys.stderr)
action = sys.argv[1]
if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if action == "sleep":
    open("pid", "w").write(str(os.getpid()))
    import time; time.sleep(600)
sys.exit(int(action))
""".replace("import json, os, sys", "import json, os, signal, sys")


def test_a_forked_run_is_its_own_process_with_the_callers_folder_environment_and_exit(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    result = subprocess.run([*python(), "probe.py", "3", "x y"], cwd=tmp_path, env={**os.environ, "PROBE": "é"},
                            capture_output=True, text=True, timeout=60, preexec_fn=lambda: os.umask(0o027))
    assert result.returncode == 3 and result.stderr == "to stderr\n"
    seen = json.loads(result.stdout)
    assert seen["ppid"] == conftest._forkserver["server"].pid  # forked by the server, not a fresh interpreter
    assert seen["argv"] == ["probe.py", "3", "x y"] and seen["cwd"] == str(tmp_path) and seen["env"] == "é"
    assert seen["umask"] == 0o027 and seen["session"] and seen["name"] == "__main__" and seen["path0"] == str(tmp_path)

    killed = subprocess.run([*python(), "probe.py", "kill"], cwd=tmp_path, capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    module = subprocess.run([*python(), "-m", "das_tune.cli", "--version"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert module.returncode == 0 and module.stdout.startswith("das-tune ") and module.stderr == ""


def test_a_killed_caller_takes_its_forked_run_with_it(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    caller = subprocess.Popen([*python(), "probe.py", "sleep"], cwd=tmp_path, stdout=subprocess.DEVNULL)
    while not (tmp_path / "pid").exists():
        time.sleep(0.05)
    forked = int((tmp_path / "pid").read_text())
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{forked}") and time.monotonic() < deadline:  # until the server reaps it
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{forked}")

    again = subprocess.run([*python(), "probe.py", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert json.loads(again.stdout)["ppid"] == conftest._forkserver["server"].pid  # the server outlived the caller
