"""The benchmark users can run: `python -m tei_ort.bench` (or `make bench`).

In one run, on the same texts: the raw runtime per variant and provider, the live server under
closed-loop load, sentence-transformers' default encode, and plain ONNX Runtime fp32 with TEI-like
FIFO batching of at most 8 requests, and a short query's latency through the server and on the raw
runtime, alternating query by query (server.short_queries). Results are reported as ratios to the baselines because the
machines this runs on are shared and noisy.
"""
