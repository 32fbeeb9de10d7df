"""nbconv's CPU kernels compiled in a helper process, and only their machine code loaded here.

Numba keeps all it compiles for the life of the process: each function's LLVM modules stay in
the JIT engine (MCJIT cannot remove them), with the compiler's working memory around them. A
process that meets many layer geometries grew by about 10 MiB per generated kernel, and its
first few compiles cost 150 MiB more than loading the same code from Numba's disk cache.

So where Numba keeps compiled code on disk, a miss of that cache is compiled by a helper process
(``python -c`` importing nbconv, started at the first miss): the helper compiles the kernel, which
writes it to the disk cache as any compile would, and this process loads it from there, as it
would have in the next run. What stays here is the machine code. The helper holds the compiler's
memory instead, and gives it all back when it exits: when idle for :data:`IDLE_SECONDS`, after a
compile that leaves it larger than :data:`MAX_HELPER_MIB`, and when this process exits. The next
miss starts a new one (about half a second).

The result is the same code: the helper compiles the same source with the same options for the
same CPU (checked at start: Numba's version and its target triple, CPU name and features), and
Numba's cache index, which keys each entry on these, decides what loads here. Whatever goes wrong
(no helper can start, it fails or dies, a function whose code Numba cannot cache) ends in the
compile Numba does without it, in this process. ``NBCONV_COMPILE_PROCESS=0`` turns the helper off.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.util
import os
import pickle
import subprocess
import sys
import threading
import time
import warnings

from numba.core import event

#: A helper idle this long exits (seconds).
IDLE_SECONDS = 20.0
#: A helper larger than this after a compile exits (MiB resident): the next miss starts a new one.
#: 320 keeps it under 400 MiB (at most 324-332 over 200 random layers and 10 grouped ones, two
#: or three helpers one after the other, the same time as with 400: `python docs/geometry_memory.py`).
MAX_HELPER_MIB = 320.0
#: Kernels compiled by a helper that then did not load here, before no more helpers are started.
MAX_NOT_LOADED = 3
#: The environment variable that turns the helper off ("0") and that a helper is started with.
ENV = "NBCONV_COMPILE_PROCESS"

_local = threading.local()
_lock = threading.RLock()


def enabled() -> bool:
    """Whether misses of the disk cache go to a helper: not in a helper, not turned off, and
    where Numba keeps nbconv's compiled code on disk."""
    from . import _numba_options

    return os.environ.get(ENV, "1") != "0" and _numba_options.CACHE


def _resident_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _target_key() -> tuple:
    """What decides whether code compiled in one process runs in another: Numba's version and
    its target (triple, CPU name, features: the key of its disk cache's entries)."""
    import numba
    from numba.core.registry import cpu_target

    return (numba.__version__,) + tuple(cpu_target.target_context.codegen().magic_tuple())


class _Compiling(event.Listener):
    """Counts, per thread, the compiles Numba has under way (its ``numba:compile`` event): a
    miss met inside one is a function called by a kernel compiled here, not one to send."""

    def on_start(self, event):
        _local.depth = getattr(_local, "depth", 0) + 1

    def on_end(self, event):
        _local.depth = getattr(_local, "depth", 1) - 1


class Helper:
    """The parent's end of one helper process: :meth:`compile` sends a function and signature and
    waits until it is in the disk cache, or says it is not."""

    def __init__(self):
        self.proc = None
        self.pid = None  # the process that started it (a forked child starts its own)
        self.broken = False  # a helper that could not start, or runs another target: no more tries
        self.compiled = 0  # kernels compiled by helpers for this process
        self.started = 0  # helpers started
        self.unloaded = 0  # compiled by a helper, yet not found in the disk cache here
        self.peak_mib = 0.0  # the largest resident size a helper reported after a compile (MiB; 0 where unknown)

    def _start(self) -> bool:
        import numba

        here = os.path.abspath(__file__)
        # this nbconv first on the path, and not the working folder (-c puts it there), whatever it holds
        boot = (f"import sys; sys.path[:] = [{os.path.dirname(os.path.dirname(here))!r}] + "
                "[p for p in sys.path if p != '']; "
                f"from nbconv._compile_process import serve; serve({IDLE_SECONDS!r}, {MAX_HELPER_MIB!r})")
        # the disk cache this process reads, even where the environment changed after Numba read it
        env = dict(os.environ, NUMBA_CACHE_DIR=numba.config.CACHE_DIR, **{ENV: "0"})
        try:
            proc = subprocess.Popen([sys.executable, "-c", boot], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    env=env, close_fds=True)
            ready = pickle.load(proc.stdout)
        except Exception as error:  # noqa: BLE001 (any failure to start: compile here)
            self._give_up(f"no helper process could start ({error!r})")
            return False
        if ready != ("ready", _target_key(), here):
            self._stop(proc)
            self._give_up("the helper process compiles for another target, Numba or nbconv: " + repr(ready[1:])[:300])
            return False
        self.proc, self.pid = proc, os.getpid()
        self.started += 1
        return True

    def _give_up(self, why: str) -> None:
        self.broken = True
        warnings.warn(f"nbconv: {why}; CPU kernels are compiled in this process, which keeps the compiler's "
                      f"memory (set {ENV}=0 to say so and silence this)", RuntimeWarning, stacklevel=5)

    @staticmethod
    def _stop(proc) -> None:
        try:
            proc.stdin.close()
            proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            proc.kill()

    def stop(self) -> None:
        """Let the helper go (it exits when its input closes)."""
        if self.proc is not None and self.pid == os.getpid():
            self._stop(self.proc)
        self.proc = None

    def _request(self, message):
        try:
            pickle.dump(message, self.proc.stdin)
            self.proc.stdin.flush()
            return pickle.load(self.proc.stdout)
        except BaseException:  # KeyboardInterrupt included: its answer would be read as the next one's
            with contextlib.suppress(Exception):
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
            raise

    def not_loaded(self) -> None:
        """Say that code the helper compiled did not load from the disk cache here; after
        :data:`MAX_NOT_LOADED` of them, no more helpers."""
        self.unloaded += 1
        if self.unloaded >= MAX_NOT_LOADED and not self.broken:
            self.stop()
            self._give_up(f"{self.unloaded} kernels the helper process compiled did not load from the disk cache")

    def compile(self, dispatcher, sig) -> bool:
        """Have a helper compile ``dispatcher`` for ``sig`` into the disk cache; whether it did."""
        py_func = dispatcher.py_func
        message = ("compile", py_func.__module__, py_func.__code__.co_filename, py_func.__qualname__, sig)
        with _lock:
            for attempt in range(2):  # a helper that exited when idle as this arrived: start another
                if self.proc is None or self.pid != os.getpid() or self.proc.poll() is not None:
                    if self.broken or not self._start():
                        return False
                try:
                    reply = self._request(message)
                except (OSError, EOFError, pickle.UnpicklingError):
                    continue
                if reply[0] == "exit":  # compiled, then grew past MAX_HELPER_MIB and left
                    self.stop()
                if reply[0] in ("ok", "exit"):
                    self.peak_mib = max(self.peak_mib, reply[1] or 0.0)
                self.compiled += reply[0] in ("ok", "exit")
                return reply[0] in ("ok", "exit")
        return False


helper = Helper()
atexit.register(helper.stop)
_listening = []


class _MissesToHelper:
    """A dispatcher's disk cache (Numba's ``FunctionCache``) whose misses, met outside another
    compile, are first compiled by the helper and then loaded."""

    def __init__(self, cache, dispatcher):
        self._cache = cache
        self._dispatcher = dispatcher

    def __getattr__(self, name):
        return getattr(self._cache, name)

    def load_overload(self, sig, target_context):
        cres = self._cache.load_overload(sig, target_context)
        if cres is None and getattr(_local, "depth", 0) == 0 and enabled() and helper.compile(self._dispatcher, sig):
            cres = self._cache.load_overload(sig, target_context)
            if cres is None:
                helper.not_loaded()
        return cres


def route(dispatcher):
    """Send ``dispatcher``'s misses of Numba's disk cache to a helper (see the module's text);
    ``dispatcher`` itself is returned. Dispatchers without a disk cache are left alone."""
    from numba.core.caching import FunctionCache

    if not isinstance(getattr(dispatcher, "_cache", None), FunctionCache):
        return dispatcher
    if not _listening:
        event.register("numba:compile", _Compiling())
        _listening.append(True)
    dispatcher._cache = _MissesToHelper(dispatcher._cache, dispatcher)
    return dispatcher


def _function(module_name: str, path: str, qualname: str):
    module = sys.modules.get(module_name)
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a generated module: imported from its file, as nbconv.cpu._generated does
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    target = module
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def serve(idle_seconds: float, max_mib: float) -> None:
    """The helper's loop: read a request from standard input, compile, answer on standard output
    (Python's and Numba's prints go to standard error), until the input closes, it has been idle
    ``idle_seconds``, or it is larger than ``max_mib`` after a compile."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    pickle.dump(("ready", _target_key(), os.path.abspath(__file__)), replies)
    replies.flush()
    state = {"busy": False, "last": time.monotonic()}

    def watch():
        while True:
            time.sleep(min(1.0, idle_seconds / 4))
            if not state["busy"] and time.monotonic() - state["last"] > idle_seconds:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:
            return
        state["busy"] = True
        _, module_name, path, qualname, sig = message
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # this process's compile says what it has to say
                _function(module_name, path, qualname).compile(sig)
            resident = _resident_mib()
            reply = ("exit" if resident is not None and resident > max_mib else "ok", resident)
        except Exception as error:  # noqa: BLE001 (the parent compiles it and meets the error there)
            reply = ("error", repr(error)[:2000])
        pickle.dump(reply, replies)
        replies.flush()
        if reply[0] == "exit":
            return
        state["busy"], state["last"] = False, time.monotonic()
