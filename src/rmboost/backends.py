"""Build a backend from user-facing options (CLI flags, experiment configs)."""

from __future__ import annotations

from dataclasses import dataclass

from rmboost.llm.types import Backend


@dataclass
class BackendOptions:
    backend: str = "llamacpp"  # "llamacpp" | "openai"
    model: str | None = None  # openai: the served model name; llamacpp: a GGUF path (None = embedded)
    # openai: endpoint, e.g. http://localhost:8000/v1; repeat --base-url for replicas of one model
    # (each attempt goes to the least-loaded healthy replica).
    base_url: str | list[str] | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 6
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    n_ctx: int = 8192
    threads: int | None = None  # llamacpp: CPU threads (None: all cores; 1 is faster on a busy machine)
    logits_all: bool = False
    # openai: name the deployment for the cache key instead of its URL(s), so cached answers
    # survive a change of URL or of the replica set (default: the URL, or the sorted replica set).
    cache_identity: str | None = None
    # openai: stop the job when this many requests in a row failed after all their retries (0: off).
    breaker_failures: int = 50
    # openai: stop the job when every attempt has failed for this many seconds (0: off).
    breaker_seconds: float = 120.0


def make_backend(opts: BackendOptions, concurrency: int | None = None) -> Backend:
    """`concurrency`: the job's --concurrency, the ceiling of the openai backend's adaptive limit."""
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
            max_in_flight=concurrency,
            breaker_failures=opts.breaker_failures,
            breaker_seconds=opts.breaker_seconds,
            cache_identity=opts.cache_identity,
        )
    raise ValueError(f"unknown backend {opts.backend!r} (use llamacpp or openai)")
