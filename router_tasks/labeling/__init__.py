"""Labels from models: the OpenAI-compatible client, the request cache, the local LLM server,
references, generate, judge (online and batch), the cost ledger and file-mode labeling.
May import `core` and `data`."""
