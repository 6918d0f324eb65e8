"""`python -m tests.serve.fake_server --port N ...`: the real app, the real Engine and the CLI's
own run() (Sanic's single-process server, its signal handling and graceful shutdown) over the
slow fake model, so that lifecycle tests (listen after warm-up, SIGTERM under load) exercise the
production path in a separate process without loading a real model."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence

from tei_ort.engine import Engine, EngineConfig
from tei_ort.engine.types import FloatArray
from tei_ort.serve.access import AccessPolicy
from tei_ort.serve.app import create_app
from tei_ort.serve.cli import run
from tei_ort.serve.logs import configure_logging
from tei_ort.tokenization import Encoded
from tests.serve.fakes import SlowModel
from tests.serve.live import context

READY = "fake server ready"
WARMING_UP = "fake server warming up"
# With --gated, a line on stdin opens a gate: WARM lets the warm-up forward end, GO lets every
# later forward run (each waits until then), so a test decides when, not a clock.
WARM = "warm"
GO = "go"


class AnnouncingModel(SlowModel):
    def forward(self, encodings: Sequence[Encoded]) -> FloatArray:
        if self.forwards == 0:
            print(WARMING_UP, flush=True)  # the engine's warm-up forward is starting
        return super().forward(encodings)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--forward-s", type=float, default=0.05)
    parser.add_argument("--warm-up-s", type=float, default=0.0)
    parser.add_argument("--max-concurrent-requests", type=int, default=512)
    parser.add_argument("--max-batch-requests", type=int, default=None)
    parser.add_argument("--gated", action="store_true", help="forwards wait for stdin lines")
    args = parser.parse_args()
    configure_logging("info", json_output=False)
    model = AnnouncingModel(forward_s=args.forward_s, warm_up_s=args.warm_up_s)
    if args.gated:
        model.warm_gate.clear()
        model.gate.clear()
        threading.Thread(target=_open_gates, args=(model,), daemon=True).start()
    engine = Engine(
        model,
        EngineConfig(
            max_concurrent_requests=args.max_concurrent_requests,
            max_batch_requests=args.max_batch_requests,
            max_client_batch_size=64,
        ),
    )
    app = create_app(
        context(engine),
        payload_limit=2_000_000,
        access=AccessPolicy(None, ()),
        on_started=lambda: print(READY, flush=True),
    )

    logging.getLogger(__name__).info("starting on 127.0.0.1:%d", args.port)
    run(app, "127.0.0.1", args.port)


def _open_gates(model: AnnouncingModel) -> None:
    gates = {WARM: model.warm_gate, GO: model.gate}
    for line in sys.stdin:
        gates[line.strip()].set()


if __name__ == "__main__":
    main()
