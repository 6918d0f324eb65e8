"""The on-the-fly export runs in a child process (tei_ort.serve.child_process), so the server never
holds torch or the exporter's memory: the child's result and exceptions come back whole, its log
lines reach the server's stream, and a child that dies says how."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tei_ort.errors import PackageError, UnsupportedModel
from tei_ort.serve import child_process
from tei_ort.serve.child_process import ChildTraceback, run_in_child
from tei_ort.serve.logs import JsonFormatter
from tests.conftest import TinyBert

REPO = Path(__file__).resolve().parents[2]


# Targets run in the child: module-level, so they pickle by name.
def _pid_and(value: int) -> tuple[int, int]:
    return os.getpid(), value * 2


def _raise_unsupported(name: str) -> None:
    raise UnsupportedModel(f"{name}: no exporter for this architecture")


class _Unpicklable(Exception):
    def __init__(self, message: str, handle: object) -> None:
        super().__init__(message)
        self.handle = handle


def _raise_unpicklable() -> None:
    raise _Unpicklable("a lock inside", handle=lambda: None)


def _a_class_only_the_child_has() -> object:
    import types

    module = types.ModuleType("tei_ort_only_in_the_child")
    sys.modules[module.__name__] = module
    exec("class Result:\n    pass", module.__dict__)
    return module.Result()


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _exit_quietly() -> None:
    os._exit(3)


def _reply_then_hang() -> int:
    """Replies, then never exits: a non-daemon thread keeps the interpreter alive."""
    import threading
    import time

    threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
    return os.getpid()


def _log_then_return() -> str:
    logging.getLogger("tei_ort.export.somewhere").info("child line at info")
    logging.getLogger("tei_ort.export.somewhere").debug("child line at debug")
    return "done"


def _run(target: Callable[..., object], *args: object) -> object:
    return run_in_child(target, args, what="exporting org/model")


def test_the_result_comes_from_another_process() -> None:
    result = _run(_pid_and, 21)
    assert isinstance(result, tuple)
    pid, doubled = result
    assert doubled == 42
    assert pid != os.getpid()


def test_the_childs_exception_is_raised_here_with_its_traceback() -> None:
    with pytest.raises(UnsupportedModel, match="org/model: no exporter") as caught:
        _run(_raise_unsupported, "org/model")
    cause = caught.value.__cause__
    assert isinstance(cause, ChildTraceback)
    assert "_raise_unsupported" in str(cause) and "UnsupportedModel" in str(cause)


def test_an_exception_that_does_not_pickle_comes_back_as_a_package_error() -> None:
    with pytest.raises(PackageError, match="_Unpicklable: a lock inside"):
        _run(_raise_unpicklable)


def test_a_reply_that_does_not_load_here_is_a_package_error() -> None:
    with pytest.raises(PackageError, match="exporting org/model: its reply could not be read"):
        _run(_a_class_only_the_child_has)


def test_a_child_killed_says_so_and_names_memory() -> None:
    with pytest.raises(PackageError) as caught:
        _run(_kill_self)
    message = str(caught.value)
    assert message.startswith("exporting org/model stopped: its process was killed (SIGKILL)")
    assert "out-of-memory" in message and "tei-export MODEL -o PACKAGE" in message


def test_a_child_that_exits_without_a_result_gives_its_status() -> None:
    with pytest.raises(
        PackageError, match="exporting org/model stopped: its process exited with status 3"
    ):
        _run(_exit_quietly)


def test_a_child_that_hangs_after_replying_is_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(child_process, "EXIT_WAIT_S", 0.5)
    pid = _run(_reply_then_hang)
    assert isinstance(pid, int) and pid != os.getpid()
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(pid, 0)


@pytest.fixture
def root_handler() -> Iterator[Callable[[str, logging.Formatter], None]]:
    """Puts a handler on the root logger, at INFO, as tei-serve's or tei-embed's set-up does."""
    root = logging.getLogger()
    level, added = root.level, []

    def add(stream: str, formatter: logging.Formatter) -> None:
        handler = logging.StreamHandler(getattr(sys, stream))
        handler.setFormatter(formatter)
        root.addHandler(handler)
        added.append(handler)
        root.setLevel(logging.INFO)

    yield add
    for handler in added:
        root.removeHandler(handler)
    root.setLevel(level)


def test_the_childs_log_lines_reach_the_servers_stream_at_its_level(
    root_handler: Callable[[str, logging.Formatter], None], capfd: pytest.CaptureFixture[str]
) -> None:
    root_handler("stdout", logging.Formatter("%(levelname)s %(name)s: %(message)s"))  # tei-serve
    assert _run(_log_then_return) == "done"
    out, err = capfd.readouterr()
    assert "INFO tei_ort.export.somewhere: child line at info" in out
    assert "child line" not in err and "child line at debug" not in out


def test_json_logs_stay_json_and_stderr_stays_stderr(
    root_handler: Callable[[str, logging.Formatter], None], capfd: pytest.CaptureFixture[str]
) -> None:
    root_handler("stderr", JsonFormatter())  # --json-output, on tei-embed's stream
    assert _run(_log_then_return) == "done"
    out, err = capfd.readouterr()
    lines = [json.loads(line) for line in err.splitlines() if "child line" in line]
    assert [(line["level"], line["message"]) for line in lines] == [("INFO", "child line at info")]
    assert "child line" not in out


def _write_pid_then_sleep(path: str) -> None:
    import time

    Path(path).write_text(str(os.getpid()))
    time.sleep(600)


# A stand-in server: runs a long child, then is SIGKILLed by the test.
PARENT = """
import sys
from tests.serve import test_child_process as t
from tei_ort.serve.child_process import run_in_child
run_in_child(t._write_pid_then_sleep, (sys.argv[1],), what="exporting org/model")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_killed_mid_export_takes_the_child_with_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(pid_file)], env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    try:
        for _ in range(600):
            if pid_file.is_file() and pid_file.read_text():
                break
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert _alive(child)
    finally:
        parent.kill()
        parent.wait()
    for _ in range(100):  # the kernel's SIGKILL reaches it at once
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting for whoever adopted it to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_died_reads_signals_and_statuses() -> None:
    assert child_process.died(-signal.SIGTERM) == "its process was killed (SIGTERM)"
    assert child_process.died(1) == "its process exited with status 1 without a result"
    assert child_process.died(-200) == "its process was killed (signal 200)"  # no such name


# In a fresh interpreter, as tei-serve is: resolve a plain model (exported on the fly), then say
# whether this process imported torch.
RESOLVE = """
import json, logging, sys
from tei_ort.serve import model_source
from tei_ort.serve.settings import load_settings
settings = load_settings(sys.argv[1:], {})
logging.basicConfig(level=logging.INFO)
path = model_source.resolve(settings, "cpu").path
print(json.dumps({"path": str(path), "torch": "torch" in sys.modules}))
"""


def test_a_server_that_exports_on_the_fly_never_loads_torch_itself(
    tiny_bert_fp32: Callable[[str], TinyBert], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    source = tiny_bert_fp32("embedding").source
    args = [
        "--model-id",
        str(source),
        "--variant",
        "fp32",
        "--huggingface-hub-cache",
        str(tmp_path),
    ]
    got, log = _resolve(args)
    assert got["torch"] is False
    package = Path(str(got["path"]))
    assert (package / "manifest.json").is_file() and (package / "model.onnx").is_file()
    assert "in a child process" in log
    # A second start reuses the package without a child: no export, the same folder.
    again, log = _resolve(args)
    assert again == got
    assert "in a child process" not in log and "reusing the package" in log


def _resolve(args: list[str]) -> tuple[dict[str, object], str]:
    """RESOLVE's JSON line and everything it printed."""
    run = subprocess.run(
        [sys.executable, "-c", RESOLVE, *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return got, run.stdout + run.stderr


def test_tei_serve_stops_cleanly_when_the_export_fails_in_the_child(
    tiny_bert_fp32: Callable[[str], TinyBert], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    source = tiny_bert_fp32("embedding").source
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    (broken / "model.safetensors").unlink()
    (broken / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    run = subprocess.run(
        [sys.executable, "-m", "tei_ort.serve.cli", "--model-id", str(broken), "--port", "0"],
        env={**os.environ, "HUGGINGFACE_HUB_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 2, output[-3000:]
    assert "cannot start:" in output
    assert "pytorch_model.bin: not a readable PyTorch checkpoint" in output
    assert "Traceback" not in output
