"""cjllm: comparative judgement of essays with an LLM judge, bundled into few provider calls."""

__version__ = "0.1.0"
