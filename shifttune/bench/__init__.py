"""`shifttune bench`: a load generator for any OpenAI-compatible completions server (ours, vLLM, ...).

Modules, top to bottom: `compare` (start `shifttune serve` per mode and bench each), `runner` (arrivals,
concurrency, one run per rate, interruption), `client` (one streamed request over aiohttp, SSE parsing,
the ignore_eos fallback), `datasets` (random / ShareGPT / Azure-trace prompts), `tokenizer` (a light
tokenizer for exact prompt lengths), `metrics` (vLLM's `bench serve` definitions), `report` (progress
bar, tables, plot, JSON), `config` (the settings and their checks).

Nothing here imports torch or the engine: the package stays light enough for `shifttune --help`.
"""
