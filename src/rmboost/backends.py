"""Build a backend from user-facing options (CLI flags, experiment configs)."""

from __future__ import annotations

from dataclasses import dataclass

from rmboost.llm.types import Backend
from rmboost.options import option

BACKENDS = ("llamacpp", "openai")


@dataclass
class BackendOptions:
    """Which model answers and how it is reached: `rmboost generate`'s backend flags, an
    experiment's `generator` section, and the judge's connection (see JudgeOptions)."""

    backend: str = option("llamacpp", choices=BACKENDS,
                          help="llamacpp (local GGUF) or openai (any compatible endpoint).")
    model: str | None = option(None, help="openai: served model name; llamacpp: GGUF path (default: embedded SmolLM2-135M-Instruct).")
    base_url: str | None = option(None, help="openai: endpoint, e.g. http://localhost:8000/v1.")
    api_key_env: str = option("OPENAI_API_KEY", help="openai: environment variable holding the API key.")
    requests_per_minute: float | None = option(None, flags=("--rpm",), help="openai: requests per minute limit.")
    tokens_per_minute: float | None = option(None, flags=("--tpm",), help="openai: tokens per minute limit.")
    timeout: float = option(120.0, help="openai: per-request timeout in seconds.")
    max_retries: int = option(6, help="openai: retries on 429/5xx/timeouts.")
    n_ctx: int = option(8192, help="llamacpp: context window.")
    threads: int | None = option(None, help="llamacpp: CPU threads (default: all cores; fewer helps when the machine is busy).")
    logits_all: bool = option(False, cli=False, yaml=False)  # library use: every position's logits


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
