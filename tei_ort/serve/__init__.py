"""tei-serve: the HTTP layer. TEI's routes, OpenAI embeddings and Cohere/Jina rerank over Sanic,
in front of tei_ort.engine. `cli.main` wires the concrete pieces; `app.create_app` builds the app
around any object that satisfies `engine_api.EngineAPI`."""
