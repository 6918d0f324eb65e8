"""Flags take effect end to end: `load_settings([...])` -> `cli.build` -> a real Sanic server on a
loopback socket, on the tiny hand-built package of tests/runtime/conftest.py (whose vectors the
in-process runtime reproduces). Each test asserts the values a client gets back, or what reached
the ONNX Runtime session, not only status codes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from sanic import Sanic

from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.serve.cli import build
from tei_ort.serve.settings import load_settings
from tests.runtime.conftest import make_package  # noqa: F401  (the fixture, used by name)
from tests.serve import live

MakePackage = Callable[..., Path]
# Longer than the tiny package's max_input_length (16 tokens with [CLS] and [SEP]).
LONG = "the quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat " * 2


def base_args(package: Path, cache: Path) -> list[str]:
    return [
        "--model-id",
        str(package),
        "--huggingface-hub-cache",
        str(cache),
        "--prometheus-port",
        "0",
        "--provider",
        "cpu",
        "--variant",
        "fp32",
    ]


def built(
    package: Path, cache: Path, *extra: str, environ: Mapping[str, str] | None = None
) -> Sanic:  # type: ignore[type-arg]
    return build(load_settings([*base_args(package, cache), *extra], dict(environ or {})))


@contextmanager
def serve_app(app: Sanic) -> Iterator[httpx.Client]:  # type: ignore[type-arg]
    """The app from cli.build on a loopback socket; yields a client on its base URL."""
    with live.serve_app(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def reference(package: Path) -> Model:
    """The in-process runtime on the same package, with the package's own manifest."""
    return Model.load(package, RuntimeOptions(provider="cpu", variant="fp32"))


# -- --default-prompt / --default-prompt-name --------------------------------------------------


def test_default_prompt_is_prepended(make_package: MakePackage, tmp_path: Path) -> None:  # noqa: F811
    package = make_package()
    ref = reference(package)
    with serve_app(built(package, tmp_path / "hub", "--default-prompt", "query: ")) as client:
        r = client.post("/embed", json={"inputs": "hello"})
        assert r.status_code == 200
        got = np.asarray(r.json(), dtype=np.float32)
    want = ref.embed(["query: hello"], normalize=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, ref.embed(["hello"], normalize=True), atol=1e-3)


def test_default_prompt_name_picks_the_package_prompt(
    make_package: MakePackage,  # noqa: F811
    tmp_path: Path,
) -> None:
    package = make_package(prompts={"query": "query: ", "passage": "passage: "})
    ref = reference(package)
    app = built(package, tmp_path / "hub", "--default-prompt-name", "query")
    with serve_app(app) as client:
        got = np.asarray(client.post("/embed", json={"inputs": "hello"}).json(), np.float32)
        # An explicit prompt_name still wins over the default one.
        passage = client.post("/embed", json={"inputs": "hello", "prompt_name": "passage"})
        got_passage = np.asarray(passage.json(), np.float32)
    np.testing.assert_allclose(got, ref.embed(["query: hello"], normalize=True), atol=1e-5)
    assert not np.allclose(got, ref.embed(["hello"], normalize=True), atol=1e-3)
    np.testing.assert_allclose(
        got_passage, ref.embed(["passage: hello"], normalize=True), atol=1e-5
    )


# -- AUTO_TRUNCATE -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "environ"),
    [(("--auto-truncate", "false"), {}), ((), {"AUTO_TRUNCATE": "false"})],
    ids=["flag", "env"],
)
def test_auto_truncate_false_refuses_long_inputs(
    make_package: MakePackage,  # noqa: F811
    tmp_path: Path,
    extra: tuple[str, ...],
    environ: dict[str, str],
) -> None:
    package = make_package()
    ref = reference(package)
    assert len(ref.encode([LONG], truncate=True)[0]) == 16  # so LONG is over the limit
    with serve_app(built(package, tmp_path / "hub", *extra, environ=environ)) as client:
        r = client.post("/embed", json={"inputs": LONG})
        # A request that asks for truncation is still truncated.
        asked = client.post("/embed", json={"inputs": LONG, "truncate": True})
        short = client.post("/embed", json={"inputs": "hello"})
    assert r.status_code == 422
    body = r.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == "Validation"
    assert "must have less than 16 tokens" in body["error"]
    assert asked.status_code == 200
    np.testing.assert_allclose(
        np.asarray(asked.json(), np.float32), ref.embed([LONG], normalize=True), atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(short.json(), np.float32), ref.embed(["hello"], normalize=True), atol=1e-5
    )


def test_auto_truncate_default_truncates(make_package: MakePackage, tmp_path: Path) -> None:  # noqa: F811
    package = make_package()
    ref = reference(package)
    with serve_app(built(package, tmp_path / "hub")) as client:
        r = client.post("/embed", json={"inputs": LONG})
    assert r.status_code == 200
    got = np.asarray(r.json(), np.float32)
    # The embedding of the text cut at 16 tokens: the same as the runtime's truncated one, and
    # the same as that of the kept tokens decoded back to text.
    np.testing.assert_allclose(got, ref.embed([LONG], normalize=True), atol=1e-5)
    kept = ref.encode([LONG], truncate=True)[0]
    assert len(kept) == 16
    words = LONG.split()
    head = " ".join(words[:14])  # one token per word here, plus [CLS] and [SEP]
    assert len(ref.encode([head], truncate=False)[0]) == 16
    np.testing.assert_allclose(got, ref.embed([head], normalize=True), atol=1e-5)


# -- --intra-op-threads / --ort-spinning -------------------------------------------------------


def _ort_options(app: Sanic) -> object:  # type: ignore[type-arg]
    model = app.ctx.serve.engine.model  # ObservedEngine -> Engine -> runtime.Model
    return model.session._session.get_session_options()


def test_ort_flags_reach_the_session(make_package: MakePackage, tmp_path: Path) -> None:  # noqa: F811
    package = make_package()
    app = built(package, tmp_path / "hub", "--intra-op-threads", "1", "--ort-spinning")
    options = _ort_options(app)
    assert options.intra_op_num_threads == 1  # type: ignore[attr-defined]
    spinning = options.get_session_config_entry("session.intra_op.allow_spinning")  # type: ignore[attr-defined]
    assert spinning == "1"
    # And the defaults: ORT's own thread count (0) and no spinning.
    default = _ort_options(built(package, tmp_path / "hub2"))
    assert default.intra_op_num_threads == 0  # type: ignore[attr-defined]
    assert default.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # type: ignore[attr-defined]
