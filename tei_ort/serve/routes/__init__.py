"""Routes, one module per API: tei (native), openai, rerank_compat (Cohere/Jina), health, docs,
dispatch (POST /, /invocations, /vertex)."""
