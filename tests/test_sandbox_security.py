"""The code interpreter's security suite: hostile snippets, each of which must be contained.

Every snippet prints ESCAPED only if its attack worked. For each one: ESCAPED must not appear, the
snippet's own check holds (it failed, or was killed, or timed out), the session still answers (restarted
where it had to be), the host's decoy resources are untouched (a loopback TCP server, an abstract unix
socket, a secret file, a secret environment variable, host /tmp), another live session keeps its files,
and no process of the sandbox is left behind. Run: pytest tests/test_sandbox_security.py -v
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import psutil
import pytest

from gptqwen.tools.sandbox import Limits, Session, namespaces_work

pytestmark = pytest.mark.skipif(not namespaces_work(), reason="this machine cannot create the sandbox's namespaces")

LIMITS = Limits(timeout_s=1.5, memory_mb=512, nproc=32, fsize_mb=8, disk_mb=16, max_output=4096)
TOKEN = secrets.token_hex(6)
SECRET_ENV = f"GPTQWEN_TEST_SECRET_{TOKEN}"
REPO = str(Path(__file__).resolve().parents[1])
LIBC = "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"


def failed(r) -> bool:
    return r.exit_code != 0 or r.timed_out


def timed_out(r) -> bool:
    return r.timed_out and r.exit_code is None


def printed(text):
    return lambda r: text in r.stdout


# name -> (code, check of the result). `{...}` fields are filled from the host fixture below.
HOSTILE = {
    # --- reading outside the work dir
    "read /etc/passwd": ("print('ESCAPED', open('/etc/passwd').read())", failed),
    "read /etc/shadow": ("print('ESCAPED', open('/etc/shadow').read())", failed),
    "read the user's home": ("import os; f = [x for x in os.listdir({home!r}) if x != '.pyenv']\n"  # .pyenv: the interpreter
                             "print('ESCAPED' if f else 'hidden')", lambda r: failed(r) or printed("hidden")(r)),
    "read the project checkout": ("import os; print('ESCAPED', os.listdir({repo!r}))", failed),
    "read a host secret file": ("print('ESCAPED', open({secret_file!r}).read())", failed),
    "list host devices": ("import os; d = os.listdir('/dev'); print('ESCAPED' if len(d) > 4 else d)", printed("null")),
    "symlink out of /work": ("import os; os.symlink('/etc/hostname', '/work/h'); print('ESCAPED', open('/work/h').read())",
                             failed),
    "import the project": ("import gptqwen; print('ESCAPED', gptqwen.__file__)", failed),
    # --- writing outside it
    "write into /usr": ("open('/usr/ESCAPED', 'w').write('x'); print('ESCAPED')", failed),
    "write into /": ("open('/ESCAPED', 'w').write('x'); print('ESCAPED')", failed),
    "write into host /tmp": ("open('/tmp/gptqwen-escape-{token}', 'w').write('x'); print('ESCAPED')", failed),
    "remount /usr read-write": ("import os; os.system('mount -o remount,rw /usr'); open('/usr/x', 'w'); print('ESCAPED')",
                                failed),
    "huge file": ("open('/work/big', 'wb').write(b'0' * (64 << 20)); print('ESCAPED')", failed),
    "fill the disk": ("for i in range(64): open(f'/work/f{{i}}', 'wb').write(b'0' * (4 << 20))\nprint('ESCAPED')", failed),
    # --- the parent's environment and process
    "read the environment": ("import os; print('ESCAPED' if {secret_env!r} in str(os.environ) else sorted(os.environ))",
                             printed("HOME")),
    "/proc/self tricks": ("print('ESCAPED', open('/proc/self/environ').read(), open('/proc/1/cmdline').read())", failed),
    "/proc/self/mem write": ("f = open('/proc/self/mem', 'wb'); print('ESCAPED')", failed),
    "mount a fresh /proc": (LIBC + "import os; os.mkdir('/work/p')\n"
                            "print('ESCAPED' if libc.mount(b'proc', b'/work/p', b'proc', 0, None) == 0 else 'denied')",
                            printed("denied")),
    "the parent's open files": ("import json, os, sys\nc = json.loads(sys.argv[1])\n"
                                "def is_open(fd):\n    try:\n        return bool(os.fstat(fd))\n    except OSError:\n"
                                "        return False\n"
                                "extra = [fd for fd in range(3, 256) if is_open(fd) and fd not in (c['req_fd'], c['resp_fd'])]\n"
                                "print('ESCAPED' if extra else 'closed', extra)", printed("closed")),
    "kill the host process": ("import os; os.kill({host_pid}, 0); print('ESCAPED')", failed),
    "kill every process": ("import os, signal; os.kill(-1, signal.SIGKILL); print('ESCAPED')", lambda r: True),
    "ptrace pid 1": (LIBC + "print('ESCAPED' if libc.ptrace(16, 1, 0, 0) == 0 else 'denied')", printed("denied")),
    "ptrace own child": (LIBC + "import os, time\npid = os.fork()\nif pid == 0: time.sleep(5); os._exit(0)\n"
                         "print('ESCAPED' if libc.ptrace(16, pid, 0, 0) == 0 else 'denied')", printed("denied")),
    "ctypes segfault": ("import ctypes; ctypes.string_at(0)", lambda r: r.exit_code == -11),
    "ctypes new user namespace": (LIBC + "print('ESCAPED' if libc.unshare(0x10000000) == 0 else 'denied')",
                                  printed("denied")),
    "ctypes chroot": ("import os; os.chroot('/work'); print('ESCAPED')", failed),
    "mknod a disk device": ("import os, stat; os.mknod('/work/sda', stat.S_IFBLK | 0o600, os.makedev(8, 0)); "
                            "print('ESCAPED')", failed),
    "keyctl / bpf / io_uring": (LIBC + "r = [libc.syscall(n, 0, 0, 0, 0) for n in (250, 321, 425)]\n"
                                "print('ESCAPED' if any(x >= 0 for x in r) else 'denied')", printed("denied")),
    "set the clock": (LIBC + "import ctypes\nts = (ctypes.c_long * 2)(0, 0)\n"
                      "print('ESCAPED' if libc.clock_settime(0, ts) == 0 else 'denied')", printed("denied")),
    "forge the sandbox reply": ("import json, os, sys; fd = json.loads(sys.argv[1])['resp_fd']\n"
                                "os.write(fd, b'{{\"exit_code\": 0, \"marker\": \"x\"}}\\n'); print('real')",
                                printed("real")),
    # --- network
    "connect to loopback": ("import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1); print('ESCAPED')",
                            failed),
    "connect to loopback v6": ("import socket; socket.create_connection(('::1', {port}), timeout=1); print('ESCAPED')",
                               failed),
    "connect outside": ("import socket; socket.create_connection(('1.1.1.1', 53), timeout=1); print('ESCAPED')", failed),
    "udp to loopback": ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                        "s.sendto(b'x', ('127.0.0.1', {port})); print('ESCAPED')", failed),
    "raw packet socket": ("import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW); print('ESCAPED')", failed),
    "dns lookup": ("import socket; print('ESCAPED', socket.getaddrinfo('example.com', 80))", failed),
    "host abstract unix socket": ("import socket; s = socket.socket(socket.AF_UNIX)\n"
                                  "s.connect({abstract!r}); print('ESCAPED')", failed),
    # --- resources
    "fork bomb": ("import os\nwhile True: os.fork()", failed),
    "process bomb": ("import subprocess\nwhile True: subprocess.Popen(['sleep', '60'])", failed),
    "memory bomb": ("x = bytearray(10 ** 10); print('ESCAPED')", failed),
    "memory growth": ("a = []\nwhile True: a.append(bytearray(32 << 20))", failed),
    "infinite loop": ("while True: pass", timed_out),
    "huge output": ("print('x' * 10 ** 8)", lambda r: r.truncated and len(r.stdout) < 5000),
    "output flood": ("while True: print('spam' * 100)", lambda r: r.timed_out and len(r.stdout) < 5000),
    "deep recursion": ("import sys; sys.setrecursionlimit(10 ** 7)\ndef f(n): return f(n + 1)\nf(0)", failed),
    "sleeping orphan outlives its parent": ("import os, time\nif os.fork() == 0:\n    os.setsid(); time.sleep(60)\n"
                                            "time.sleep(60)", timed_out),
    "daemon left running": ("import subprocess; subprocess.Popen(['sleep', '60'], start_new_session=True); print('left')",
                            printed("left")),
    "delete the work dirs": ("import shutil; shutil.rmtree('/work', ignore_errors=True); print('done')", printed("done")),
}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Decoys on the host side, and a second session whose files must survive every snippet."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0gptqwen-test-{TOKEN}")
    abstract.listen()
    abstract.setblocking(False)
    secret = tmp_path_factory.mktemp("secret") / "secret.txt"
    secret.write_text("top secret")
    held = open(secret)  # an open file of the host's, which no session may inherit
    os.environ[SECRET_ENV] = "1"
    other = Session(LIMITS)
    assert other.run("open('/work/keep', 'w').write('keep')").exit_code == 0
    fields = {"home": os.path.expanduser("~"), "repo": REPO, "secret_file": str(secret), "token": TOKEN,
              "secret_env": SECRET_ENV, "host_pid": os.getpid(), "port": server.getsockname()[1],
              "abstract": f"\0gptqwen-test-{TOKEN}"}  # fmt: skip
    yield {"fields": fields, "server": server, "abstract": abstract, "other": other}
    other.close()
    held.close()
    server.close()
    abstract.close()
    del os.environ[SECRET_ENV]


def _live_descendants() -> set[int]:
    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                pids.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_snippet_is_contained(name, host):
    code, check = HOSTILE[name]
    before = _live_descendants()
    with Session(LIMITS) as s:
        r = s.run(code.format(**host["fields"]))
        assert "ESCAPED" not in r.stdout, (r.stdout, r.stderr)
        assert check(r), r
        assert s.run("print(6 * 7)").stdout == "42\n"  # the session goes on (restarted if the snippet ended it)
    assert _live_descendants() <= before, "a sandbox process was left behind"
    for sock in (host["server"], host["abstract"]):
        with pytest.raises(BlockingIOError):
            sock.accept()
    assert not Path(f"/tmp/gptqwen-escape-{TOKEN}").exists()
    assert host["other"].run("print(open('/work/keep').read())").stdout == "keep\n"
