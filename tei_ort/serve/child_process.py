"""One call run in a child process, for work whose memory should leave with it: the on-the-fly
export loads torch, the PyTorch model and its reference outputs, which a server would otherwise
hold for its lifetime (1.1 GB for the embedded MiniLM on the Zen 3 where it was measured; more
for larger models).

The child is spawned (a fresh interpreter: no copy of the server's threads or sessions; the
arguments, a hub token among them, travel over a pipe, never on a command line), logs as the
parent does (the root logger's level, and its handlers on stdout and stderr with their
formatters: tei-serve's text or JSON on stdout, tei-embed's on stderr), and dies with the server
(Linux: PR_SET_PDEATHSIG). Its result comes back, or its exception, re-raised here with the
child's traceback as the cause; a child that dies without a word (the kernel's out-of-memory
killer, most often) is a PackageError that says how it died."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

from tei_ort.errors import PackageError

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_WAIT_S = 30.0  # for a child that has replied to exit


class ChildTraceback(Exception):
    """The child's traceback, as the cause of the exception re-raised in the parent."""

    def __str__(self) -> str:
        return "\n" + "".join(self.args)


@dataclass(frozen=True)
class LogSetup:
    """The root logger's level and its handlers on stdout / stderr: what a child repeats."""

    level: int
    handlers: tuple[tuple[str, int, logging.Formatter | None], ...]  # stream, level, formatter

    @classmethod
    def of_this_process(cls) -> LogSetup:
        root = logging.getLogger()
        handlers = []
        for handler in root.handlers:
            stream = getattr(handler, "stream", None)
            name = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}.get(id(stream))
            if name is not None:
                handlers.append((name, handler.level, _picklable(handler.formatter)))
        return cls(root.level, tuple(handlers))

    def apply(self) -> None:
        root = logging.getLogger()
        root.setLevel(self.level)
        for name, level, formatter in self.handlers:
            handler = logging.StreamHandler(getattr(sys, name))
            handler.setLevel(level)
            if formatter is not None:
                handler.setFormatter(formatter)
            root.addHandler(handler)


def _picklable(formatter: logging.Formatter | None) -> logging.Formatter | None:
    try:
        pickle.dumps(formatter)
    except Exception:  # a formatter of the caller's that holds something unpicklable
        return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    return formatter


def run_in_child(target: Callable[..., T], args: tuple[Any, ...], *, what: str) -> T:
    """target(*args) in a spawned child process; `target` and `args` must pickle (a module-level
    function). `what` names the work in the error raised when the child dies."""
    context = multiprocessing.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    child = context.Process(
        target=_child,
        args=(writer, target, args, os.getpid(), LogSetup.of_this_process()),
        name="tei-ort-child",
    )
    child.start()
    writer.close()  # the child's end: EOF here once the child is gone
    try:
        try:
            outcome, value, child_traceback = reader.recv()
        except EOFError:
            child.join()
            raise PackageError(f"{what} stopped: {died(child.exitcode)}") from None
        except Exception as exc:  # a reply that does not load here (a class only the child has)
            raise PackageError(f"{what}: its reply could not be read ({exc})") from exc
        child.join(EXIT_WAIT_S)
    finally:
        reader.close()
        # The server was interrupted, or the child hangs on its way out after replying (a
        # library's thread): it is not waited for.
        if child.is_alive():
            child.terminate()
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join()
    if outcome == "ok":
        return cast(T, value)
    raise value from ChildTraceback(child_traceback)


def died(exitcode: int | None) -> str:
    """How a child that sent nothing ended, in words."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return (
                f"its process was killed ({name}), most likely by the kernel's out-of-memory "
                "killer: exporting needs about 1.4x the model's fp32 weights in memory; export "
                "on a machine with more (tei-export MODEL -o PACKAGE) and serve the package"
            )
        return f"its process was killed ({name})"
    return f"its process exited with status {exitcode} without a result"


def _child(
    conn: Connection,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    parent: int,
    logs: LogSetup,
) -> None:
    _die_with(parent)
    logs.apply()
    try:
        reply: tuple[str, Any, str] = ("ok", target(*args), "")
    except BaseException as exc:  # every failure goes back to the parent
        reply = ("error", exc, traceback.format_exc())
    try:
        conn.send(reply)
    except Exception as exc:  # an exception or a result that does not pickle
        error = reply[1] if reply[0] == "error" else exc
        conn.send(("error", PackageError(f"{type(error).__name__}: {error}"), reply[2]))
    conn.close()


def _die_with(parent: int) -> None:
    """Linux: the kernel kills this process when the server's process ends, so a server killed
    mid-export leaves no export running (the export is crash-safe: nothing half-written loads)."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the server died before the call above
        os._exit(1)
