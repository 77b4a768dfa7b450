"""What a job prints: per stage a progress bar with its rate and ETA and a one-line result.

Everything else goes to one log file per command, ``<run_dir>/logs/<command>-<time>.log`` (for a
remote run directory, a local folder, :func:`log_dir`), which :func:`session` names at the start
and again on failure: Ray's driver loggers (Ray Data's progress blocks included), every line Ray
forwards from its workers (Ray Train's ``Reporting training result``, worker tracebacks) and the
package's own ``semconv.*`` log records. ``verbose`` prints them as well; warnings always are.

A bar made inside a Ray worker (:func:`progress`: the fine-tune's steps on a Ray Train worker)
travels the same way: the worker prints its state as a marker line, and the driver draws the bar
instead of printing the line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

MARK = "__semconv_progress__ "
WORKER_OUTPUT = "semconv_worker_output"  # our handler's name in Ray's worker-output dispatcher


class _Session:
    def __init__(self) -> None:
        self.log: TextIO | None = None  # None: no session; Ray prints as usual
        self.verbose = True
        self.handler: logging.Handler | None = None  # log records -> the log file
        self.undo: list[Callable[[], None]] = []  # restores what the session changed
        self.bars: dict[str, tqdm] = {}  # RemoteBar id -> its bar here


_now = _Session()


def log_dir(run_dir: str) -> Path:
    """``<run_dir>/logs``, or ``<tmp>/semconv-logs/<run_dir as a name>`` for a remote run directory."""
    from semconv.artifacts import filesystem

    _, path, local = filesystem(run_dir)
    if local:
        return Path(path) / "logs"
    return Path(tempfile.gettempdir()) / "semconv-logs" / re.sub(r"[^\w.-]+", "_", run_dir).strip("_")


@contextlib.contextmanager
def session(run_dir: str, command: str, verbose: bool = False) -> Iterator[Path]:
    """Send log output to a new file for the length of one command; yields the file's path."""
    folder = log_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    _now.log, _now.verbose = path.open("a", buffering=1), verbose
    _now.handler = logging.StreamHandler(_now.log)
    _now.handler.setLevel(logging.INFO)  # Ray Data's loggers pass DEBUG on
    _now.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    print(f"semconv {command}: logs in {path}" + ("" if verbose else " (--verbose prints them)"), flush=True)
    _own_loggers()
    _quiet_ray_driver()
    try:
        yield path
    except BaseException:
        print(f"semconv {command} failed; logs in {path}", file=sys.stderr, flush=True)
        raise
    finally:
        for b in _now.bars.values():
            b.close()
        _now.bars.clear()
        while _now.undo:
            _now.undo.pop()()
        _now.log.close()
        _now.log, _now.handler, _now.verbose = None, None, True


def capture_worker_output() -> None:
    """After ``ray.init``: what Ray forwards from workers goes through :func:`_on_worker_output`."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    ray_print = next((h for name, h in dispatcher.handlers if name == "ray_print_logs"), None)
    if ray_print is None:  # ray.init(log_to_driver=False): nothing is forwarded
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler(WORKER_OUTPUT)
    dispatcher.add_handler(WORKER_OUTPUT, lambda data: _on_worker_output(data, ray_print))
    _quiet_ray_driver()  # ray.init may have added loggers


def _on_worker_output(data: dict[str, Any], ray_print: Callable[[dict], None]) -> None:
    """One batch of one worker's lines: markers move bars; the rest goes to the log (and Ray's printer).
    The autoscaler's batches are its whole log, which Ray's printer filters to events: left to it."""
    if data.get("pid") == "autoscaler":
        if _now.handler is None or _now.verbose:
            ray_print(data)
        return
    lines = []
    for line in data.get("lines", []):
        if line.startswith(MARK):
            with contextlib.suppress(ValueError, KeyError):
                _draw(json.loads(line[len(MARK):]))
        else:
            lines.append(line)
    if not lines:
        return
    if _now.handler is not None:
        who = data.get("actor_name") or data.get("task_name") or "worker"
        prefix = f"({who} pid={data.get('pid')}, ip={data.get('ip')}) "
        with _now.handler.lock:
            _now.log.write("".join(prefix + line + "\n" for line in lines))
    if _now.handler is None or _now.verbose:
        ray_print({**data, "lines": lines})


def _own_loggers() -> None:
    """``semconv.*`` records: INFO and up to the log file; warnings (everything when verbose) to stderr."""
    logger = logging.getLogger("semconv")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if _now.verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    level, to_file = logger.level, _now.handler
    logger.setLevel(logging.INFO)
    logger.addHandler(to_file)
    logger.addHandler(console)
    _now.undo.append(lambda: (logger.setLevel(level), logger.removeHandler(to_file),
                              logger.removeHandler(console)))


def _quiet_ray_driver() -> None:
    """Ray's driver loggers write to the log file (and, verbose, to the console as before); Ray Data
    draws no progress of its own unless verbose."""
    if _now.handler is None:
        return
    import ray.data  # configures Ray Data's loggers on import: before they are changed here

    ctx = ray.data.DataContext.get_current()
    if not _now.verbose and ctx.enable_progress_bars:
        ctx.enable_progress_bars = False
        _now.undo.append(lambda: setattr(ctx, "enable_progress_bars", True))
    found = [lg for n, lg in logging.root.manager.loggerDict.items()
             if n.startswith("ray.") and isinstance(lg, logging.Logger) and lg.handlers]
    for logger in [logging.getLogger("ray"), *found]:
        if _now.handler in logger.handlers:
            continue
        consoles = [] if _now.verbose else [h for h in logger.handlers if type(h) is not logging.FileHandler
                                            and isinstance(h, logging.StreamHandler)]
        for h in consoles:
            logger.removeHandler(h)
        logger.addHandler(_now.handler)
        _now.undo.append(lambda lg=logger, hs=consoles, h=_now.handler: (
            lg.removeHandler(h), [lg.addHandler(c) for c in hs]))


def bar(desc: str, total: int | None, unit: str, initial: int = 0) -> tqdm:
    """A tqdm bar on stderr: redrawn twice a second on a terminal, every 30 s into a file."""
    tty = sys.stderr.isatty()
    return tqdm(desc=desc, total=total, unit=unit, initial=initial, file=sys.stderr, dynamic_ncols=tty,
                mininterval=0.5 if tty else 30, smoothing=0.1)


def progress(desc: str, total: int | None, unit: str, initial: int = 0) -> tqdm | RemoteBar:
    """A progress bar with rate and ETA: :func:`bar` on the driver, a :class:`RemoteBar` in a Ray worker."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized() and ray._private.worker.global_worker.mode == ray.WORKER_MODE:
            return RemoteBar(desc, total, unit, initial)
    return bar(desc, total, unit, initial)


class RemoteBar:
    """A bar's worker side (tqdm's ``update``, ``total``, ``set_postfix_str``, ``close``): its state
    goes to the real stdout as a marker line, at most once a second and on ``close``. The real
    stdout, since Ray Train tees a worker's ``print`` into its logger, which Ray forwards too."""

    def __init__(self, desc: str, total: int | None, unit: str, initial: int = 0):
        self.id, self.desc, self.total, self.unit = uuid.uuid4().hex, desc, total, unit
        self.initial = self.n = initial
        self.postfix, self.closed, self._sent = "", False, 0.0
        self._send()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._sent >= 1.0:
            self._send()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._send()

    def _send(self) -> None:
        self._sent = time.monotonic()
        state = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        sys.__stdout__.write(MARK + json.dumps(state) + "\n")
        sys.__stdout__.flush()


def _draw(state: dict[str, Any]) -> None:
    """Apply a :class:`RemoteBar`'s state to its bar here (a restarted worker's new bar replaces the old)."""
    b = _now.bars.get(state["id"])
    if b is None:
        for old in [i for i, o in _now.bars.items() if o.desc == state["desc"]]:
            _now.bars.pop(old).close()
        b = _now.bars[state["id"]] = bar(state["desc"], state["total"], state["unit"], state["initial"])
    b.total = state["total"]
    b.set_postfix_str(state["postfix"], refresh=False)
    b.update(state["n"] - b.n)
    if state["closed"]:
        _now.bars.pop(state["id"]).close()
