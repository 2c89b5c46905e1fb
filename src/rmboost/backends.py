"""Build a backend from user-facing options (CLI flags, experiment configs)."""

from __future__ import annotations

from dataclasses import dataclass

from rmboost.llm.types import Backend


@dataclass
class BackendOptions:
    backend: str = "llamacpp"  # "llamacpp" | "openai"
    model: str | None = None  # openai: the served model name; llamacpp: a GGUF path (None = embedded)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 6
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    n_ctx: int = 8192
    threads: int | None = None  # llamacpp: CPU threads (None: all cores; 1 is faster on a busy machine)
    logits_all: bool = False


def make_backend(opts: BackendOptions) -> Backend:
    if opts.backend == "llamacpp":
        from rmboost.llm.llamacpp import LlamaCppBackend

        return LlamaCppBackend(opts.model, n_ctx=opts.n_ctx, n_threads=opts.threads, logits_all=opts.logits_all)
    if opts.backend == "openai":
        from rmboost.llm.openai_compat import OpenAIBackend

        if not opts.base_url or not opts.model:
            raise ValueError("the openai backend needs --base-url and --model")
        return OpenAIBackend(
            opts.base_url,
            opts.model,
            api_key_env=opts.api_key_env,
            timeout=opts.timeout,
            max_retries=opts.max_retries,
            requests_per_minute=opts.requests_per_minute,
            tokens_per_minute=opts.tokens_per_minute,
        )
    raise ValueError(f"unknown backend {opts.backend!r} (use llamacpp or openai)")
