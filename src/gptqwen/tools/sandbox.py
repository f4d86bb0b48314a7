"""The code interpreter: stateful Python sessions that run model-written code in an isolated process.

    from gptqwen.tools.sandbox import Session, Limits, run_code
    with Session(Limits(timeout_s=5, memory_mb=512)) as s:
        s.run("x = 6 * 7")
        s.run("print(x)").stdout            # '42\\n'  (variables persist within a session)
    run_code("import os; print(os.listdir('/'))").to_json()   # a one-shot session

    gptqwen sandbox run script.py --timeout 5 --memory-mb 512 --json
    gptqwen sandbox repl

Each session is one worker process (`_sandbox_worker.py`, stdlib only) started through util-linux `unshare` in
new mount, network, pid, ipc and uts namespaces (plus a user namespace when we are not root). Inside, it sees a
fresh root holding read-only binds of the interpreter, its site-packages and /usr, four device nodes, and a
private size-capped tmpfs at /work (the only writable place; gone when the session ends); no network at all
(an empty network namespace); no other process (its own pid namespace: killing its pid 1 ends every process the
code started). Then rlimits (CPU, address space, processes, file size, open files), privileges dropped (root:
uid 65534; otherwise every capability), no_new_privs, and on x86-64 a seccomp filter (mount, ptrace,
namespaces, keyrings, bpf, io_uring, ... and non-AF_UNIX sockets refused). The environment is replaced, and
only the session's pipes are inherited.

Without user namespaces (`isolation="rlimits"`, chosen automatically when `unshare` fails): the same rlimits,
privilege drop, seccomp filter (so no sockets), clean environment and a private working directory, but the
host's file system stays readable where its permissions allow, and descendants are collected by a subreaper
rather than a pid namespace. `Session.isolation` says which one a session got.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gptqwen.errors import UserError

_WORKER = Path(__file__).with_name("_sandbox_worker.py")
_NOBODY = 65534
_UNSHARE = ["unshare", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]
MODES = ("auto", "namespaces", "rlimits")


@dataclass
class Limits:
    """Per-session limits. `timeout_s` is wall clock per cell; the CPU limit per cell defaults to it."""

    timeout_s: float = 10.0
    cpu_s: float | None = None
    memory_mb: int = 1024  # address space of each process
    nproc: int = 64  # processes (fork bombs stop here)
    fsize_mb: int = 16  # largest file the code may write
    disk_mb: int = 64  # size of the private /work tmpfs
    nofile: int = 256
    max_output: int = 20_000  # bytes of stdout and of stderr kept per cell
    session_cpu_s: int = 3600  # CPU seconds for the whole session

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "nproc", "fsize_mb", "disk_mb", "nofile", "max_output"):
            if not getattr(self, name) > 0:
                raise UserError(f"sandbox limit {name} must be positive, got {getattr(self, name)}")


@dataclass
class ExecResult:
    """The outcome of one cell: what it printed, how it ended, and its matplotlib figures (base64 PNG)."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = 0
    timed_out: bool = False
    error: str | None = None
    images: list[str] = field(default_factory=list)
    truncated: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    def as_text(self) -> str:
        """What a model reads back: output, then the error (if any)."""
        parts = [self.stdout.rstrip("\n")]
        if self.stderr.strip() and self.exit_code != 0:
            parts.append(self.stderr.rstrip("\n"))
        elif self.error:
            parts.append(f"Error: {self.error}")
        if self.images:
            parts.append(f"[{len(self.images)} figure(s)]")
        return "\n".join(p for p in parts if p)


@functools.lru_cache(maxsize=1)
def namespaces_work() -> bool:
    """Whether this machine lets us start a sandbox in namespaces (probed once per process)."""
    if shutil.which("unshare") is None:
        return False
    try:
        with Session(Limits(timeout_s=20), isolation="namespaces") as s:
            return s.run("1").stdout.strip() == "1"
    except (UserError, OSError):
        return False


def _python_paths() -> list[tuple[str, str]]:
    """(host dir, sandbox dir) of the interpreter's import path, without the gptqwen checkout itself (the sandbox
    must not see the project); directories outside the interpreter's prefix appear under /pylib/<n>."""
    own = Path(__file__).resolve().parents[2]
    prefix = os.path.realpath(sys.base_prefix)
    out: dict[str, str] = {}
    for p in sys.path:
        if not p or not os.path.isdir(p) or (Path(p).resolve() == own and Path(p).name != "site-packages"):
            continue
        real = os.path.realpath(p)
        out.setdefault(real, real if real.startswith(prefix + "/") else f"/pylib/{len(out)}")
    return list(out.items())


def _binds(paths: list[tuple[str, str]]) -> list[tuple[str, str]]:
    base = ["/usr", "/bin", "/lib", "/lib32", "/lib64", "/sbin", "/etc/ld.so.cache", os.path.realpath(sys.base_prefix)]
    return [(b, b) for b in base] + [(src, dst) for src, dst in paths if dst.startswith("/pylib/")]


class Session:
    """One stateful interpreter (see the module docstring); started on first use, restarted after a crash or timeout."""

    def __init__(self, limits: Limits | None = None, isolation: str = "auto", seccomp: bool = True) -> None:
        """`seccomp=False` leaves the system-call filter out (to test the other layers on their own)."""
        if isolation not in MODES:
            raise UserError(f"unknown sandbox isolation '{isolation}'; choose one of {', '.join(MODES)}")
        self.limits = limits or Limits()
        self.requested, self.seccomp = isolation, seccomp
        self.isolation: dict = {}
        self._proc: subprocess.Popen | None = None
        self._inner: list[int] = []
        self._workdir: str | None = None
        self.restarts = 0

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        mode = self.requested
        if mode == "auto":
            mode = "namespaces" if namespaces_work() else "rlimits"
        lim, paths = self.limits, _python_paths()
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        # root becomes nobody, unless (without a new root to bind it into) nobody could not reach the interpreter
        root = os.geteuid() == 0 and (mode == "namespaces" or all(_world_reachable(src) for src, _ in paths))
        if mode == "rlimits":
            self._workdir = tempfile.mkdtemp(prefix="gptqwen-sandbox-")
            if root:
                os.chown(self._workdir, _NOBODY, _NOBODY)
        home = "/work" if mode == "namespaces" else self._workdir
        config = {
            "namespaces": mode == "namespaces", "workdir": self._workdir, "uid": _NOBODY if root else None,
            "req_fd": req_r, "resp_fd": resp_w, "max_fd": 1024, "seccomp": self.seccomp, "disk_mb": lim.disk_mb,
            "sys_path": [dst if mode == "namespaces" else src for src, dst in paths], "binds": _binds(paths),
            "limits": {"memory_mb": lim.memory_mb, "nproc": lim.nproc, "fsize_mb": lim.fsize_mb, "nofile": lim.nofile,
                       "cpu_s": int(lim.cpu_s or lim.timeout_s) + 1, "session_cpu_s": lim.session_cpu_s},
        }  # fmt: skip
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
               "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{home}/.matplotlib", "OPENBLAS_NUM_THREADS": "1",
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        cmd = [os.path.realpath(sys.executable), "-I", "-S", "-c", _WORKER.read_text(), json.dumps(config)]
        if mode == "namespaces":
            cmd = _UNSHARE + ([] if root else ["--user", "--map-root-user"]) + ["--"] + cmd
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          pass_fds=(req_r, resp_w), env=env, cwd="/", start_new_session=True)  # fmt: skip
        finally:
            os.close(req_r)
            os.close(resp_w)
        self._req, self._resp = req_w, resp_r
        self._resp_buf = b""
        state = self._read_reply(time.monotonic() + 20)
        if not state or not state.get("ok"):
            why = (state or {}).get("error") or self._proc.stderr.read(2000).decode(errors="replace").strip()
            self.close()
            raise UserError(f"could not start the code sandbox with {mode} isolation: {why or 'no reply'}")
        # the namespace's pid 1 (unshare's child): killing it ends every process of the session (see close)
        self._inner = _child_pids(self._proc.pid) if mode == "namespaces" else []
        self.isolation = {"mode": mode, "seccomp": state["seccomp"], "uid": "nobody (65534)" if root else "own, no caps"}

    def close(self) -> None:
        """End the session: kill its processes (all of them) and remove its working directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                if self.isolation.get("mode") == "rlimits":  # the worker's pid 1 kills its descendants on SIGTERM
                    proc.terminate()
                for pid in self._inner:  # the namespace's pid 1: the kernel then kills everything inside, and
                    _kill(pid)          # unshare reaps it (killing unshare too would leave it to the host's init)
                try:
                    proc.wait(2)
                except subprocess.TimeoutExpired:
                    _kill(-proc.pid)
            proc.wait()
            for f in (proc.stdout, proc.stderr):
                f.close()
            for fd in (self._req, self._resp):
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self.close()

    # ------------------------------------------------------------------------------------------ running code
    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        """Run one cell; never raises for what the code does (errors, crashes, timeouts are in the result)."""
        note = ""
        if self._proc is None:
            self.start()
        elif self._proc.poll() is not None:  # died in an earlier cell (os._exit, a limit): start afresh
            self.close()
            self.start()
            self.restarts += 1
            note = " (the interpreter had ended, so this ran in a fresh session)"
        timeout = timeout or self.limits.timeout_s
        marker = f"\0{secrets.token_hex(8)}\0"
        req = {"code": code, "cpu_s": self.limits.cpu_s or timeout, "marker": marker}
        try:
            os.write(self._req, (json.dumps(req) + "\n").encode())
        except BrokenPipeError:
            self.close()
            return self.run(code, timeout)
        out, err = _Capture(marker, self.limits.max_output), _Capture(marker, self.limits.max_output)
        deadline = time.monotonic() + timeout
        reply = self._read_reply(deadline, out, err, marker)
        res = ExecResult(stdout=out.text(), stderr=err.text(), truncated=out.dropped > 0 or err.dropped > 0)
        if reply is not None:
            res.exit_code, res.error, res.images = reply.get("exit_code"), reply.get("error"), reply.get("images", [])
        elif time.monotonic() >= deadline and self._proc.poll() is None:  # still running: past the wall-clock limit
            self.close()
            res.exit_code, res.timed_out = None, True
            res.error = f"timed out after {timeout:g} s; the session was reset, its variables are gone"
        else:  # the interpreter died (a crash, os._exit, a limit's signal)
            try:
                code_ = self._proc.wait(5)
            except subprocess.TimeoutExpired:
                code_ = None
            self.close()
            res.exit_code = 128 - code_ if code_ is not None and code_ > 128 else code_  # -signal, like subprocess
            res.error = _death(res.exit_code) + "; the session was reset, its variables are gone"
        if note:
            res.error = res.error + note if res.error else note.strip(" ()")
        return res

    def _read_reply(self, deadline: float, out: _Capture | None = None, err: _Capture | None = None,
                    marker: str | None = None) -> dict | None:  # fmt: skip
        """Read stdout, stderr and the reply pipe until a reply and both end markers arrived, EOF, or the deadline.
        A reply without this cell's marker (the code wrote to the reply pipe itself) is ignored."""
        streams = {self._resp: None}
        if out is not None:
            streams.update({self._proc.stdout.fileno(): out, self._proc.stderr.fileno(): err})
        reply = None
        while streams:
            if reply is not None and all(c.done for c in (out, err) if c is not None):
                break
            left = deadline - time.monotonic() if reply is None else 2.0
            if left <= 0:
                break
            ready, _, _ = select.select(list(streams), [], [], left)
            if not ready and reply is not None:
                break  # a reply but no marker within 2 s: a grandchild holds the pipe; keep what we have
            for fd in ready:
                data = os.read(fd, 65536)
                if not data:
                    del streams[fd]
                elif fd == self._resp:
                    self._resp_buf += data
                    while b"\n" in self._resp_buf and reply is None:
                        line, self._resp_buf = self._resp_buf.split(b"\n", 1)
                        reply = _parse_reply(line)
                        if out is None:
                            return reply
                        if reply.get("marker") != marker:
                            reply = None
                else:
                    streams[fd].feed(data)
        return reply


class _Capture:
    """One stream of a cell: keeps the first `cap` bytes, counts the rest, stops at the cell's end marker."""

    def __init__(self, marker: str, cap: int) -> None:
        self.marker, self.cap = marker.encode(), cap
        self.kept, self.dropped, self.done = bytearray(), 0, False
        self._pending = b""  # the last bytes, held back in case they begin the marker

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self._pending += data
        at = self._pending.find(self.marker)
        if at >= 0:
            self.done = True
            self._commit(self._pending[:at])
            self._pending = b""
        else:
            hold = len(self.marker) - 1
            self._commit(self._pending[:-hold])
            self._pending = self._pending[-hold:]

    def _commit(self, data: bytes) -> None:
        room = max(0, self.cap - len(self.kept))
        self.kept += data[:room]
        self.dropped += max(0, len(data) - room)

    def text(self) -> str:
        self._commit(self._pending)
        self._pending = b""
        s = self.kept.decode(errors="replace")
        return s + (f"\n[... {self.dropped} more bytes not shown]" if self.dropped else "")


def _world_reachable(path: str) -> bool:
    """Whether a user with no privileges can reach `path` (every directory on the way searchable by others)."""
    p = Path(path)
    return all(os.stat(d).st_mode & 0o001 for d in [p, *p.parents] if d.exists())


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL) if pid > 0 else os.killpg(-pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _child_pids(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if entry.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _parse_reply(line: bytes) -> dict:
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    return reply if isinstance(reply, dict) else {"exit_code": 1, "error": "the interpreter sent a malformed reply"}


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        why = {"SIGKILL": " (killed: a memory, CPU or process limit, or os.kill)", "SIGXCPU": " (CPU time limit)"}
        return f"the interpreter was killed by {name}{why.get(name, '')}"
    return f"the interpreter exited with code {code}"


def run_code(code: str, limits: Limits | None = None, isolation: str = "auto") -> ExecResult:
    """Run `code` once in a fresh session (the CLI's `gptqwen sandbox run`)."""
    with Session(limits, isolation) as s:
        return s.run(code)
