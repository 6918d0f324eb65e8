"""tei-embed: embed files offline, with the runtime and the server's engine (no HTTP).

inputs.py     which files, and their rows (JSONL, Parquet, CSV, plain text), bad rows named
shards.py     the output: Parquet shards written atomically, and the manifest that resumes a job
model.py      --model-id -> a loaded Model and the server's EngineConfig for it
job.py        the shard loop: one engine request per shard (the server's token-budget batcher)
spans.py      which file rows each shard holds, from row counts (a shard read on its own)
ray_job.py    --ray: the same shards on Ray Data (an actor pool), into the same folder
progress.py   a progress bar on a terminal, log lines otherwise; the summary
cli.py        `tei-embed`
"""
