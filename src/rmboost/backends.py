"""Build a backend from user-facing options (CLI flags, experiment configs)."""

from __future__ import annotations

from dataclasses import dataclass

from rmboost.llm.types import Backend
from rmboost.options import at_least, option

BACKENDS = ("llamacpp", "openai")


def http_urls(value: str | list[str]) -> str | None:
    """One endpoint or several: each an http(s) URL."""
    for url in [value] if isinstance(value, str) else value:
        if not url.startswith(("http://", "https://")):
            return f"must be an http:// or https:// URL, got {url!r}"
    return None


@dataclass
class BackendOptions:
    """Which model answers and how it is reached: `rmboost generate`'s backend flags, an
    experiment's `generator` section, and the judge's connection (see JudgeOptions)."""

    backend: str = option("llamacpp", choices=BACKENDS,
                          help="llamacpp (local GGUF) or openai (any compatible endpoint).")
    model: str | None = option(None, help="openai: served model name; llamacpp: GGUF path (default: embedded SmolLM2-135M-Instruct).")
    base_url: str | list[str] | None = option(
        None, check=http_urls,
        help="openai: endpoint, e.g. http://localhost:8000/v1; repeat for replicas of one model "
             "(least-loaded healthy replica first).")
    api_key_env: str = option("OPENAI_API_KEY", help="openai: environment variable holding the API key.")
    cache_identity: str | None = option(
        None, help="openai: name the deployment in the cache key instead of its URL(s), so cached "
                   "answers survive URL or replica changes.")
    breaker_failures: int = option(
        50, check=at_least(0),
        help="openai: stop (exit 2) after this many requests in a row failed after their retries (0: off).")
    breaker_seconds: float = option(
        120.0, check=at_least(0),
        help="openai: stop (exit 2) when every attempt has failed for this many seconds (0: off).")
    requests_per_minute: float | None = option(None, flags=("--rpm",), help="openai: requests per minute limit.")
    tokens_per_minute: float | None = option(None, flags=("--tpm",), help="openai: tokens per minute limit.")
    timeout: float = option(120.0, help="openai: per-request timeout in seconds.")
    max_retries: int = option(6, help="openai: retries on 429/5xx/timeouts.")
    n_ctx: int = option(8192, help="llamacpp: context window.")
    threads: int | None = option(None, help="llamacpp: CPU threads (default: all cores; fewer helps when the machine is busy).")
    logits_all: bool = option(False, cli=False, yaml=False)  # library use: every position's logits


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
