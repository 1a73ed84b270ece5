"""Running unattended for days: one instance at a time, a rotated log file, systemd's notify protocol, its watchdog
fed from the render loop, and a clean stop on SIGTERM.

API summary::

    from installation.service import Service, ServiceConfig

    with Service("live", preset.service) as service:       # lock, log file, SIGTERM handler
        loop = LiveLoop(config, on_frame=service.frame)      # READY=1 at the first frame, WATCHDOG=1 from frames
        service.on_stop(loop.stop)                           # SIGTERM (systemctl stop) ends the loop cleanly
        loop.run()                                           # STOPPING=1 when the with-block ends

    notify("READY=1")                  # sd_notify(3) datagram to $NOTIFY_SOCKET; False when not under systemd
    InstanceLock("live").acquire()     # AlreadyRunning (a UserError: exit 2, one line) if another instance has it

The systemd side (``deploy/avgan-live.service``, a user unit: ``Type=notify``, ``WatchdogSec=``,
``Restart=on-failure``) and how to install it are in ``docs/GALLERY.md``.

* **One instance**: an advisory ``flock`` on ``<run dir>/<name>.lock`` (``$AVGAN_RUN_DIR``, else
  ``$XDG_RUNTIME_DIR/avgan``, else ``/run/user/<uid>/avgan``, else ``<tmp>/avgan-<uid>``), holding the owner's
  pid and start time. The kernel drops the lock when the owner exits however it exits (a crash, SIGKILL), so a
  stale file never blocks a restart.
* **sd_notify** (https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html): one ``AF_UNIX``
  datagram per message to the socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` is the abstract namespace).
  A few lines with :mod:`socket` rather than a dependency (``sdnotify`` on PyPI is unmaintained since 2017;
  ``systemd-python`` needs libsystemd headers to build).
* **Watchdog** (``sd_watchdog_enabled(3)``): with ``$WATCHDOG_USEC`` set (and ``$WATCHDOG_PID`` unset or ours),
  ``WATCHDOG=1`` goes out at most every half of that interval, *from the render loop* (:meth:`Service.frame` is
  the loop's per-frame callback): a loop that stalls (a hung driver call, a deadlock) stops the pings and systemd
  kills and restarts the process, while a loop that merely runs slowly keeps them coming. systemd arms the
  watchdog once start-up is complete (``READY=1``, sent with the first frame); model loading is covered by
  ``TimeoutStartSec=``. ``STATUS=`` (frames per second, input state, scene) is refreshed every 10 s for
  ``systemctl --user status``.
* **Log file**: ``service.log_file`` gets a :class:`logging.handlers.RotatingFileHandler` (``log_max_mb`` per
  file, ``log_backups`` old files kept) on the root logger, beside stderr (which systemd sends to the journal).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from engine.errors import UserError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The log file's line format (the same as the console's, ``run.py``)."""
STATUS_EVERY_S = 10.0
"""``STATUS=`` is refreshed this often, seconds."""


def _range(default: Any, lo: float, hi: float, unit: str = "") -> Any:
    """A dataclass field with an inclusive range (checked by the preset loader)."""
    return field(default=default, metadata={"range": (lo, hi), "unit": unit})


@dataclass(frozen=True)
class ServiceConfig:
    """A preset's ``service:`` section: how ``run.py live`` behaves as an unattended installation.

    Attributes:
        single_instance: refuse to start while another ``live`` of this user runs (the gallery: a second start
            would open a second fullscreen window without OSC).
        log_file: also log to this file, rotated (``""``: stderr only; ``~`` expands; relative paths are relative
            to the repository root).
        log_max_mb: size at which the log file is rotated, MiB.
        log_backups: rotated files kept (``live.log.1`` ... ``live.log.N``); older ones are deleted.
    """

    single_instance: bool = False
    log_file: str = ""
    log_max_mb: float = _range(10.0, 0.01, 10_000.0, "MiB")
    log_backups: int = _range(5, 0, 1000)


class AlreadyRunning(UserError, RuntimeError):
    """Another instance holds the lock; the message names its pid, its start time and how to stop it."""


def run_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where lock files live (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get("AVGAN_RUN_DIR"):
        return Path(env["AVGAN_RUN_DIR"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "avgan"
    user_run = Path(f"/run/user/{os.getuid()}")
    if user_run.is_dir() and os.access(user_run, os.W_OK):
        return user_run / "avgan"
    return Path(tempfile.gettempdir()) / f"avgan-{os.getuid()}"


class InstanceLock:
    """An exclusive, advisory lock that says "``name`` is running" (``flock`` on ``<run dir>/<name>.lock``).

    Args:
        name: what runs (``"live"``). directory: where the lock file goes (default :func:`run_dir`).
    """

    def __init__(self, name: str, directory: Path | None = None) -> None:
        self.name = name
        self.path = (directory or run_dir()) / f"{name}.lock"
        self._fd: int | None = None

    def acquire(self) -> InstanceLock:
        """Take the lock (no waiting).

        Raises:
            AlreadyRunning: another process holds it (the message names it and how to stop it).
            UserError: the lock file cannot be created (names the path).
        """
        try:
            import fcntl  # POSIX (Linux, macOS): the installation PCs this is for
        except ImportError:
            raise UserError(f"{self.name}: service.single_instance needs POSIX file locks (Linux, macOS)") from None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UserError(
                f"{self.name}: cannot create the instance lock {self.path} ({exc.strerror or exc})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            os.close(fd)
            pid = holder[0] if holder else "?"
            since = f", running since {holder[1]}" if len(holder) > 1 else ""
            raise AlreadyRunning(
                f"{self.name}: another instance is already running (pid {pid}{since}; lock {self.path}); stop it "
                f"first: systemctl --user stop avgan-{self.name} if it runs as the service, or quit its window "
                "(Esc) / kill it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (idempotent). The file stays: it is reused by the next start."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor drops the flock


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify(3) message (``"READY=1"``, ``"WATCHDOG=1"``, ``"STATUS=..."``, ``"STOPPING=1"``, or
    several separated by newlines) to ``$NOTIFY_SOCKET``.

    Returns:
        Whether it was sent: ``False`` when ``$NOTIFY_SOCKET`` is unset (not under systemd) or the socket refused
        it (logged at debug level; never raises).
    """
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode("utf-8"), address)
        return True
    except OSError as exc:
        log.debug("sd_notify %r to %s failed: %s", message, env.get("NOTIFY_SOCKET"), exc)
        return False


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC`` in seconds, or ``None`` when systemd expects no
    pings from this process (``$WATCHDOG_USEC`` unset or invalid, or ``$WATCHDOG_PID`` names another process)."""
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return usec / 1e6 / 2.0


class Service:
    """The unattended-installation duties around one loop (see the module docstring); a context manager.

    Args:
        name: what runs (``"live"``): the lock's and the unit's name.
        config: the preset's :class:`ServiceConfig` (``None``: all off; notify and watchdog still follow the
            environment systemd sets).
        env: the environment to read ``NOTIFY_SOCKET`` / ``WATCHDOG_*`` from (default ``os.environ``).
        clock: seconds, monotonic (tests pass their own).

    Attributes:
        ready: ``READY=1`` was sent. stopping: SIGTERM arrived. pings: ``WATCHDOG=1`` messages sent.
        interval_s: watchdog ping interval (``None``: no watchdog). log_path: the log file, or ``None``.
    """

    def __init__(
        self,
        name: str,
        config: ServiceConfig | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config or ServiceConfig()
        self.env = os.environ if env is None else env
        self.clock = clock
        self.interval_s = watchdog_interval_s(self.env)
        self.ready = False
        self.stopping = False
        self.pings = 0
        self.log_path: Path | None = None
        self._lock: InstanceLock | None = None
        self._handler: logging.Handler | None = None
        self._stop: Callable[[str], Any] | None = None
        self._previous_sigterm: Any = None
        self._last_ping = -float("inf")
        self._last_status = -float("inf")

    def __enter__(self) -> Service:
        try:
            if self.config.single_instance:
                self._lock = InstanceLock(self.name).acquire()
            if self.config.log_file:
                self._open_log()
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        log.info(
            "%s: pid %d%s%s%s",
            self.name,
            os.getpid(),
            ", single instance" if self._lock else "",
            f", log file {self.log_path}" if self.log_path else "",
            f", systemd watchdog every {self.interval_s:.1f} s" if self.interval_s else "",
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ready:
            notify("STOPPING=1", self.env)
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _open_log(self) -> None:
        path = Path(self.config.log_file).expanduser()
        path = path if path.is_absolute() else ROOT / path  # as presets resolve relative paths
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                path,
                maxBytes=int(self.config.log_max_mb * 1024 * 1024),
                backupCount=int(self.config.log_backups),
                encoding="utf-8",
            )
        except OSError as exc:
            raise UserError(f"service.log_file: cannot write {path} ({exc.strerror or exc})") from None
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        handler.setLevel(root.level if root.level != logging.NOTSET else logging.INFO)
        root.addHandler(handler)
        self._handler, self.log_path = handler, path

    def on_stop(self, callback: Callable[[str], Any]) -> None:
        """SIGTERM (``systemctl stop``, a shutdown) calls ``callback("SIGTERM")``: the loop ends after its frame,
        closes its devices and writes its report. Before a callback is set, SIGTERM ends the process at once."""
        self._stop = callback

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._stop is None:  # still starting: nothing to finish, die as if unhandled
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        log.info("%s: SIGTERM: stopping", self.name)
        self.stopping = True
        self._stop("SIGTERM")

    def frame(self, loop: Any = None, *_: Any) -> None:
        """Per frame of the render loop (the loop's ``on_frame`` callback): ``READY=1`` at the first call, then
        ``WATCHDOG=1`` every :attr:`interval_s`, ``STATUS=`` every :data:`STATUS_EVERY_S`. Cheap when nothing is
        due (a clock read and two comparisons)."""
        now = self.clock()
        if self.stopping and loop is not None and hasattr(loop, "stop"):
            loop.stop("SIGTERM")  # a SIGTERM that came while the loop was still starting up
        if not self.ready:
            self.ready = True
            notify(f"READY=1\nSTATUS={self._status_text(loop)}", self.env)
            self._last_status = now
        if self.interval_s is not None and now - self._last_ping >= self.interval_s:
            if notify("WATCHDOG=1", self.env):
                self.pings += 1
            self._last_ping = now
        if now - self._last_status >= STATUS_EVERY_S:
            self._last_status = now
            notify(f"STATUS={self._status_text(loop)}", self.env)

    @staticmethod
    def _status_text(loop: Any) -> str:
        """``"running: 59.8 fps, input ok, scene portrait"`` from a live loop (``"running"`` for anything else)."""
        parts = []
        try:
            if hasattr(loop, "current_fps"):
                parts.append(f"{loop.current_fps():.1f} fps")
            if hasattr(loop, "input_state"):
                parts.append(f"input {loop.input_state()}")
            if hasattr(loop, "scene_name"):
                parts.append(f"scene {loop.scene_name}")
        except Exception:  # noqa: BLE001 - a status line must never break a frame
            pass
        return "running" + (": " + ", ".join(parts) if parts else "")
