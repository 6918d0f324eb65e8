"""One-off measurement (issue 10, long inputs): the server's memory and speed on 8k-token inputs.

Builds a random-weight JinaBERT v2 with jina-embeddings-v2-base-en's dims (hidden 768, 12 layers,
12 heads, GeGLU 3072, ALiBi, 8,192 positions; the MiniLM tokenizer, so a 30,522-row vocabulary),
exports it (fp32), then for each --max-batch-tokens budget starts `tei-serve` on it in a child
process, posts one /embed request of --inputs (8) inputs of 8,000 tokens, and reports the server's RSS (psutil,
sampled every 50 ms) after start-up and at its peak during the request, the wall time and the
tokens/s, and how many forward passes ran (te_batch_next_size_count).

    PYTHONPATH=. .venv/bin/python scripts/long_input_memory.py /tmp/long-mem 16384 65536

Not part of the test suite: minutes per budget and several GB of memory. A server whose RSS passes
--rss-limit-gb is killed (the machine is shared) and reported as such."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from tei_ort.export.pipeline import ExportOptions, export_model
from tei_ort.export.st_files import write_pooling_normalize
from tei_ort.package import VariantName
from tests.export import tiny_jina, tiny_models
from tests.serve import scrape

JINA_V2_BASE = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
}
POSITIONS = tiny_jina.MAX_POSITIONS
TOKENS = 8000
WORDS = ["the", "river", "city", "north", "music", "paper", "light", "green", "house", "water"]


def build(out: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from tei_ort.export.architectures import jina_bert_model

    out.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(tiny_models.MINILM / name, out / name)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config | {"model_max_length": POSITIONS})
    )
    vocab = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])
    fields = tiny_jina.config("v2", "embedding", vocab, **JINA_V2_BASE)
    (out / "config.json").write_text(json.dumps(fields, indent=2))
    torch.manual_seed(0)
    # The module's own init (nn.Linear's): random, but activations stay finite over 12 layers.
    model = jina_bert_model.JinaBertModel(jina_bert_model.JinaBertConfig.from_json(fields))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors")
    )
    write_pooling_normalize(out, JINA_V2_BASE["hidden_size"], "mean_tokens", POSITIONS)
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a child that just exited
            total += p.memory_info().rss
    return total


def measure(
    package: Path, budget: int, inputs: int, log: Path, rss_limit: int
) -> dict[str, object]:
    port = free_port()
    args = [sys.executable, "-m", "tei_ort.serve", "--model-id", str(package)]
    args += ["--provider", "cpu", "--variant", "fp32", "--max-batch-tokens", str(budget)]
    args += ["--port", str(port), "--prometheus-port", "0"]
    args += ["--huggingface-hub-cache", str(package.parent / "hub")]
    with log.open("w") as out:
        server = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    process = psutil.Process(server.pid)
    url = f"http://127.0.0.1:{port}"
    peak = {"rss": 0}
    killed = threading.Event()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = tree_rss(process)
            peak["rss"] = max(peak["rss"], rss)
            if rss > rss_limit:
                killed.set()
                server.kill()
                return
            time.sleep(0.05)

    try:
        started = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"tei-serve exited at start-up, see {log}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        ready_s = time.perf_counter() - started
        ready_rss = tree_rss(process)
        texts = [
            " ".join(WORDS[(i * (k + 1)) % len(WORDS)] for i in range(TOKENS - 2))
            for k in range(inputs)
        ]
        with httpx.Client(base_url=url, timeout=3600) as client:
            before = scrape.scrape(client)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            tick = time.perf_counter()
            try:
                r = client.post("/embed", json={"inputs": texts, "truncate": False})
            except httpx.TransportError:
                if killed.is_set():
                    return {
                        "budget": budget,
                        "rss_ready_gb": round(ready_rss / 2**30, 2),
                        "killed_over_rss_gb": rss_limit / 2**30,
                        "after_s": round(time.perf_counter() - tick, 1),
                    }
                raise
            elapsed = time.perf_counter() - tick
            done.set()
            sampler.join()
            r.raise_for_status()
            rows = r.json()
            after = scrape.scrape(client)
        forwards = scrape.value(after, "te_batch_next_size_count") - scrape.value(
            before, "te_batch_next_size_count"
        )
        notes = [line.strip() for line in log.read_text().splitlines() if "batching:" in line]
        return {
            "budget": budget,
            "ready_s": round(ready_s, 1),
            "rss_ready_gb": round(ready_rss / 2**30, 2),
            "rss_peak_gb": round(peak["rss"] / 2**30, 2),
            "request_s": round(elapsed, 1),
            "tokens_per_s": round(inputs * TOKENS / elapsed, 1),
            "forwards": forwards,
            "rows": len(rows),
            "batching": notes[-1] if notes else None,
        }
    finally:
        done.set()
        if server.poll() is None:
            server.terminate()
            server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="work folder (source/, package/, logs inside)")
    parser.add_argument("budgets", nargs="+", type=int, help="--max-batch-tokens values")
    parser.add_argument("--rss-limit-gb", type=float, default=14.0)
    parser.add_argument("--inputs", type=int, default=8, help="8,000-token inputs per request")
    args = parser.parse_args()
    folder: Path = args.folder
    package = folder / "package"
    if not (package / "manifest.json").is_file():
        source = folder / "source"
        if not (source / "config.json").is_file():
            shutil.rmtree(source, ignore_errors=True)
            build(source)
        tick = time.perf_counter()
        options = ExportOptions(
            variants=(VariantName.FP32,), validation_queries=4, validation_passages=8
        )
        export_model(str(source), package, options)
        print(f"exported in {time.perf_counter() - tick:.0f} s", flush=True)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    print(f"cpu: {cpu}, {psutil.cpu_count()} logical CPUs", flush=True)
    for budget in args.budgets:
        result = measure(
            package,
            budget,
            args.inputs,
            folder / f"serve-{budget}.log",
            int(args.rss_limit_gb * 2**30),
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
