"""The code interpreter's worker: the program that runs inside the sandbox (stdlib only, never imported by gptqwen).

`gptqwen.tools.sandbox` starts it as `python -I -S -c <this file> <config json>`, under `unshare` (new mount, net,
pid, ipc and uts namespaces; a user namespace when not started by root) or, without namespaces, directly. It then

1. builds a new root (namespaces only): a tmpfs holding read-only bind mounts of the interpreter, its
   site-packages, /usr and four device nodes, plus a size-capped tmpfs at /work, the only writable place;
   pivots into it and detaches the old root, so nothing else of the host's file system is reachable;
2. sets rlimits (CPU, address space, processes, file size, open files), drops privileges (root: to uid/gid
   65534; namespace root: every capability and the bounding set), sets no_new_privs and installs a seccomp
   filter (x86-64: mount, ptrace, namespaces, kernel keyrings, bpf, io_uring, ... refused; sockets other than
   AF_UNIX refused);
3. forks: the parent stays as a reaper (pid 1 of the namespace: when it ends, the kernel kills every process
   left in it); the child reads cells from the request pipe and runs them in one persistent namespace.

Each response is one JSON line on the response pipe, written after a per-cell marker went to stdout and
stderr, so the host knows where a cell's output ends.
"""

import ast
import base64
import ctypes
import io
import json
import os
import resource
import signal
import struct
import sys
import traceback

CONFIG = json.loads(sys.argv[1])
LIBC = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_PRIVATE, MNT_DETACH = 1024, 2048, 1 << 21, 1 << 18, 2


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enc(s):
    return s.encode() if s is not None else None


def _mount(src, target, fstype, flags, data=None) -> None:
    _check(LIBC.mount(_enc(src), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)), f"mount {target}")


def _bind_readonly(path: str, target: str) -> None:
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(path, target, None, MS_BIND | MS_REC)
    # a remount must keep the flags the original mount has (the kernel locks them in a user namespace)
    f = os.statvfs(path).f_flag
    keep = (f & (MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)) | (MS_RELATIME if f & 4096 else 0)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)


def build_root() -> None:
    """New root on a tmpfs: read-only binds of what Python needs, a private writable /work; the old root detached."""
    # any existing directory serves as the mount point of the new root, but not one above a bind source: the
    # tmpfs mounted there would hide it (a checkout and its venv under /tmp, say)
    sources = [os.path.realpath(path) for path, _ in CONFIG["binds"]]
    root = next(d for d in ("/tmp", "/mnt", "/run", "/var/tmp", "/media", "/srv", "/opt", "/home")
                if os.path.isdir(d) and not any(s == d or s.startswith(d + "/") for s in sources))
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("sandbox", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path, inside in CONFIG["binds"]:
        if os.path.islink(path):  # /lib -> usr/lib on merged-/usr systems
            os.makedirs(os.path.dirname(root + inside), exist_ok=True)
            os.symlink(os.readlink(path), root + inside)
        elif os.path.exists(path):
            _bind_readonly(path, root + inside)
    os.makedirs(root + "/dev")
    for dev in ("null", "zero", "random", "urandom"):
        open(f"{root}/dev/{dev}", "a").close()
        _mount(f"/dev/{dev}", f"{root}/dev/{dev}", None, MS_BIND)
    os.makedirs(root + "/work")
    owner = CONFIG["uid"] if CONFIG["uid"] is not None else 0
    _mount("work", root + "/work", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={CONFIG['disk_mb']}m,mode=0700,uid={owner},gid={owner}")
    os.makedirs(root + "/.old")
    pivot_root = {"x86_64": 155, "aarch64": 41}[os.uname().machine]  # the syscall has no libc wrapper
    _check(LIBC.syscall(pivot_root, root.encode(), (root + "/.old").encode()), "pivot_root")
    os.chdir("/")
    _check(LIBC.umount2(b"/.old", MNT_DETACH), "umount old root")
    os.rmdir("/.old")
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def set_limits() -> None:
    lim = CONFIG["limits"]
    for name, value in (("RLIMIT_AS", lim["memory_mb"] << 20), ("RLIMIT_NPROC", lim["nproc"]),
                        ("RLIMIT_FSIZE", lim["fsize_mb"] << 20), ("RLIMIT_NOFILE", lim["nofile"]),
                        ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    # CPU: the hard limit caps the whole session; the soft limit is moved per cell (see run_cell)
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["session_cpu_s"]))


def drop_privileges() -> None:
    for cap in range(64):  # empty bounding set: no exec can regain a capability
        if LIBC.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:  # PR_CAPBSET_DROP; EINVAL = past the last
            break
    LIBC.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    if CONFIG["uid"] is not None:  # started as real root: become nobody (clears every capability)
        os.setgroups([])
        os.setresgid(CONFIG["uid"], CONFIG["uid"], CONFIG["uid"])
        os.setresuid(CONFIG["uid"], CONFIG["uid"], CONFIG["uid"])
    else:  # root of our own user namespace: keep the id, drop the capabilities
        header = struct.pack("Ii", 0x20080522, 0)
        data = ctypes.create_string_buffer(24)
        _check(LIBC.capset(ctypes.c_char_p(header), data), "capset")
    _check(LIBC.prctl(38, 1, 0, 0, 0), "no_new_privs")  # PR_SET_NO_NEW_PRIVS


# x86-64 syscall numbers refused with EPERM: mounts, namespaces, ptrace and process memory, kernel keyrings,
# bpf, perf, modules, kexec, reboot, swap, clocks, io_uring, userfaultfd, handle-based opens, quotas, iopl.
_DENY = (101, 165, 166, 155, 161, 272, 308, 250, 248, 249, 321, 298, 246, 320, 175, 313, 176, 169, 167, 168,
         323, 310, 311, 304, 303, 425, 426, 427, 163, 164, 227, 170, 171, 172, 173, 179, 312, 428, 429, 430,
         431, 432, 433, 442)
_SOCKET, _SOCKETPAIR, _CLONE, _CLONE3 = 41, 53, 56, 435
_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080


def seccomp_filter() -> bytes:
    """A classic-BPF seccomp program (struct sock_filter[]) for x86-64; other architectures get none."""
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    allow, deny, nosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    prog: list = [(ld, 0, 0, 4), ("jne", 0xC000003E, "deny"), (ld, 0, 0, 0), ("jge", 0x40000000, "deny")]
    prog += [("jeq", nr, "deny") for nr in _DENY]
    prog += [("jeq", _CLONE3, "nosys"), ("jeq", _SOCKET, "family"), ("jeq", _SOCKETPAIR, "family"),
             ("jeq", _CLONE, "clone"), (ret, 0, 0, allow)]
    labels = {"family": len(prog)}
    prog += [(ld, 0, 0, 16), ("jeq", 1, "allow"), (ret, 0, 0, deny)]  # args[0] == AF_UNIX
    labels["clone"] = len(prog)
    prog += [(ld, 0, 0, 16), ("jset", _NS_FLAGS, "deny"), (ret, 0, 0, allow)]  # no namespace flags
    labels.update(deny=len(prog), allow=len(prog) + 1, nosys=len(prog) + 2)
    prog += [(ret, 0, 0, deny), (ret, 0, 0, allow), (ret, 0, 0, nosys)]
    out = b""
    for i, ins in enumerate(prog):
        if isinstance(ins[0], str):
            op, k, label = ins
            off = labels[label] - i - 1
            code = {"jeq": jeq, "jne": jeq, "jge": 0x35, "jset": jset}[op]
            jt, jf = (0, off) if op == "jne" else (off, 0)
            out += struct.pack("HBBI", code, jt, jf, k)
        else:
            out += struct.pack("HBBI", *ins)
    return out


def install_seccomp() -> bool:
    if os.uname().machine != "x86_64":
        return False
    prog = seccomp_filter()
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HxxxxxxP", len(prog) // 8, ctypes.addressof(buf))
    _check(LIBC.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0), "seccomp")  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    return True


def reap_until(child: int) -> int:
    """Pid 1 of the sandbox: reap every orphan; end with the status of the interpreter."""
    status = 0
    while True:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            return status
        if pid == child:
            status = os.waitstatus_to_exitcode(st)
            status = 128 - status if status < 0 else status  # killed by a signal: 128 + its number, as shells do
            if not CONFIG["namespaces"]:
                _kill_children()  # no pid namespace to end them: kill what was reparented to us
            return status


def _kill_children() -> None:
    while True:
        pids = [int(p) for p in _children(os.getpid())]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for _ in pids:
            try:
                os.wait()
            except ChildProcessError:
                return


def _children(pid: int) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(entry)
    return found


# ---------------------------------------------------------------------------------------------- the interpreter
class Interpreter:
    """Runs cells in one namespace; the last expression of a cell is printed like in a REPL."""

    def __init__(self, req_fd: int, resp_fd: int) -> None:
        self.requests = os.fdopen(req_fd, "rb")
        self.resp_fd = resp_fd
        self.globals = {"__name__": "__main__", "__builtins__": __builtins__}
        self.pid = os.getpid()

    def serve(self) -> None:
        for line in self.requests:
            req = json.loads(line)
            reply = self.run_cell(req["code"], req["cpu_s"])
            reply["marker"] = req["marker"]
            for stream in (sys.stdout, sys.stderr):  # the cell may have replaced or broken them
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001
                    pass
            marker = req["marker"].encode()
            os.write(1, marker)
            os.write(2, marker)
            os.write(self.resp_fd, (json.dumps(reply) + "\n").encode())

    def run_cell(self, code: str, cpu_s: float) -> dict:
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = used.ru_utime + used.ru_stime
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        resource.setrlimit(resource.RLIMIT_CPU, (min(hard, int(spent + cpu_s) + 1), hard))
        reply = {"exit_code": 0, "error": None, "images": []}
        try:
            tree = ast.parse(code, "<cell>")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, "<cell>", "exec"), self.globals)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), self.globals)
                if value is not None:
                    print(repr(value))
        except SystemExit as e:
            reply["exit_code"] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        except BaseException as e:  # noqa: BLE001 - every failure of model-written code is reported, not raised
            reply["exit_code"] = 1
            reply["error"] = f"{type(e).__name__}: {e}"
            tb = traceback.format_exception(type(e), e, e.__traceback__)
            print("".join(line for line in tb if 'File "<string>"' not in line), file=sys.stderr, end="")
        if os.getpid() != self.pid:  # a process the cell forked came back here: it must not answer requests
            os._exit(reply["exit_code"] if isinstance(reply["exit_code"], int) else 1)
        reply["images"] = self.figures()
        return reply

    @staticmethod
    def figures() -> list[str]:
        """Open matplotlib figures as base64 PNGs (closed afterwards)."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return []
        images = []
        try:
            for num in plt.get_fignums():
                buf = io.BytesIO()
                plt.figure(num).savefig(buf, format="png")
                images.append(base64.b64encode(buf.getvalue()).decode())
            plt.close("all")
        except Exception as e:  # noqa: BLE001
            print(f"could not render a figure: {e}", file=sys.stderr)
        return images


def main() -> None:
    req_fd, resp_fd = CONFIG["req_fd"], CONFIG["resp_fd"]
    state = {"ok": True, "error": None, "seccomp": False}
    try:
        if CONFIG["namespaces"]:
            build_root()
            os.chdir("/work")
        else:
            os.chdir(CONFIG["workdir"])
        set_limits()
        drop_privileges()
        state["seccomp"] = CONFIG["seccomp"] and install_seccomp()
        if not CONFIG["namespaces"]:
            LIBC.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come back to us, not to the host's init
        LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG again: changing credentials cleared it
    except OSError as e:
        state.update(ok=False, error=f"sandbox set-up failed: {e}")
    os.write(resp_fd, (json.dumps(state) + "\n").encode())
    if not state["ok"]:
        os._exit(70)
    for fd in range(3, CONFIG["max_fd"]):
        if fd not in (req_fd, resp_fd):
            try:
                os.close(fd)
            except OSError:
                pass
    sys.path[:] = CONFIG["sys_path"]
    child = os.fork()
    if child == 0:
        Interpreter(req_fd, resp_fd).serve()
        os._exit(0)
    os.close(req_fd)
    os.close(resp_fd)
    if not CONFIG["namespaces"]:  # the host asks us to end the session: take every descendant with us
        signal.signal(signal.SIGTERM, lambda *_: (_kill_children(), os._exit(143)))
    os._exit(reap_until(child))


main()
