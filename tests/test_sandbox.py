"""The code interpreter's behaviour: state, isolation between sessions, figures, limits, both isolation modes, CLI.
(The hostile snippets are in test_sandbox_security.py.)"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys

import psutil
import pytest

from gptqwen.cli import main
from gptqwen.errors import UserError
from gptqwen.tools.sandbox import Limits, Session, _Capture, namespaces_work, run_code

needs_ns = pytest.mark.skipif(not namespaces_work(), reason="this machine cannot create the sandbox's namespaces")
FAST = Limits(timeout_s=5, memory_mb=768)


def test_state_persists_and_sessions_are_isolated():
    with Session(FAST) as a, Session(FAST) as b:
        assert a.run("x = 6 * 7\nopen('f.txt', 'w').write('a')").exit_code == 0
        assert a.run("x").stdout == "42\n"  # the last expression is shown, like a REPL
        assert a.run("print(open('f.txt').read())").stdout == "a\n"
        r = b.run("x")
        assert r.exit_code == 1 and r.error == "NameError: name 'x' is not defined" and "NameError" in r.stderr
        assert b.run("import os; os.path.exists('f.txt')").stdout == "False\n"


def test_errors_exit_codes_and_restarts():
    with Session(Limits(timeout_s=1)) as s:
        assert s.run("import sys; sys.exit(3)").exit_code == 3
        assert s.run("y = 1").exit_code == 0
        r = s.run("import time; time.sleep(5)")
        assert r.timed_out and r.exit_code is None and "timed out after 1 s" in r.error
        r = s.run("y")  # a fresh interpreter after the timeout
        assert r.exit_code == 1 and "NameError" in r.error
        r = s.run("import os; os._exit(7)")
        assert r.exit_code == 7 and "exited with code 7" in r.error
        assert s.run("print('again')").stdout == "again\n"


def test_output_is_capped_and_figures_come_back():
    with Session(Limits(timeout_s=20, max_output=100)) as s:
        r = s.run("print('a' * 1000); import sys; print('b' * 10, file=sys.stderr)")
        assert r.truncated and r.stdout.startswith("a" * 100) and "[... 901 more bytes not shown]" in r.stdout
        assert r.stderr == "b" * 10 + "\n"
        r = s.run("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.figure()\nplt.bar([1], [2])")
        assert r.exit_code == 0 and len(r.images) == 2
        assert base64.b64decode(r.images[0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_capture_finds_a_marker_split_across_reads():
    c = _Capture("\0abc\0", cap=10)
    for piece in (b"hello wor", b"ld\0a", b"bc\0", b"late"):
        c.feed(piece)
    assert c.done and c.text() == "hello worl\n[... 1 more bytes not shown]"


def test_limits_are_validated():
    with pytest.raises(UserError, match="timeout_s must be positive"):
        Limits(timeout_s=0)
    with pytest.raises(UserError, match="unknown sandbox isolation"):
        Session(isolation="docker")


def test_rlimits_mode_without_namespaces():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with Session(Limits(timeout_s=2), isolation="rlimits") as s:
        r = s.run("import os, socket\nprint(os.getcwd())\ntry:\n    socket.socket()\nexcept OSError as e:\n    print(e)")
        assert r.stdout.splitlines() == [s._workdir, "[Errno 1] Operation not permitted"]
        assert s.isolation["mode"] == "rlimits" and s.isolation["seccomp"]
        workdir = s._workdir
        r = s.run("import os, subprocess\nfor _ in range(3): subprocess.Popen(['sleep', '60'], start_new_session=True)")
        assert r.exit_code == 0
        r = s.run("import os, time\nif os.fork() == 0:\n    os.setsid(); time.sleep(60)\ntime.sleep(60)")
        assert r.timed_out
    assert not os.path.exists(workdir)
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.status() != "zombie"]
    assert not left, "the subreaper left processes behind"


@needs_ns
def test_user_namespace_mode(monkeypatch):
    """What a normal user gets: a user namespace (we are root in it, without capabilities)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with Session(FAST, isolation="namespaces") as s:
        r = s.run("import os; print(os.getuid(), sorted(os.listdir('/work')))\nopen('/etc/passwd')")
        assert r.stdout == "0 []\n" and "FileNotFoundError" in r.error
        assert s.isolation["uid"] == "own, no caps"
        r = s.run("import ctypes; l = ctypes.CDLL(None, use_errno=True); print(l.mount(b'x', b'/usr', b'tmpfs', 0, None))")
        assert r.stdout == "-1\n"


def test_sandbox_cli(tmp_path, capsys):
    f = tmp_path / "p.py"
    f.write_text("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(4)\n")
    assert main(["sandbox", "run", str(f), "--json", "--timeout", "5"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"stdout": "out\n", "stderr": "err\n", "exit_code": 4, "timed_out": False, "error": None}
    assert main(["sandbox", "run", str(f)]) == 4
    assert capsys.readouterr().out == "out\n"
    f.write_text("while True: pass\n")
    assert main(["sandbox", "run", str(f), "--timeout", "1"]) == 124
    assert main(["sandbox", "run", str(tmp_path / "missing.py")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_sandbox_repl_from_a_pipe():
    code = "x = 20\ndef f(a):\n    return a + 1\n\nprint(f(x) * 2)\nundefined\n"
    out = subprocess.run([sys.executable, "-m", "gptqwen", "sandbox", "repl", "--timeout", "5"], input=code,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and out.stdout == "42\n" and "NameError" in out.stderr


def test_run_code_one_shot():
    r = run_code("import sys; print(sys.version_info[0])", FAST)
    assert r.to_json()["stdout"] == "3\n" and r.as_text() == "3"


@needs_ns
def test_network_namespace_alone_blocks_the_network():
    """Without the seccomp filter (which refuses non-unix sockets), the empty network namespace still holds."""
    server = socket.create_server(("127.0.0.1", 0))
    with Session(FAST, seccomp=False) as s:
        r = s.run(f"import socket; socket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=1)")
        assert not s.isolation["seccomp"]
    server.close()
    assert r.exit_code == 1 and "Network is unreachable" in r.error


@needs_ns
def test_packages_installed_under_tmp_are_importable(monkeypatch):
    """A checkout and its venv under /tmp (as CI's clean clone may be): the new root's tmpfs must not hide them."""
    import tempfile

    site = tempfile.mkdtemp(prefix="gptqwen-site-", dir="/tmp")
    os.chmod(site, 0o755)
    with open(os.path.join(site, "probe_under_tmp.py"), "w") as f:
        f.write("VALUE = 42\n")
    os.chmod(os.path.join(site, "probe_under_tmp.py"), 0o644)
    monkeypatch.setattr(sys, "path", [*sys.path, site])
    with Session(isolation="namespaces") as s:
        r = s.run("import probe_under_tmp; print(probe_under_tmp.VALUE)")
    assert (r.exit_code, r.stdout.strip()) == (0, "42")
