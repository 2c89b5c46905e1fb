"""What every `rmboost` command module shares: the consoles and how a user's error is reported.

Kept apart from rmboost.cli so that command modules (rm, align, analysis) can import it without
importing the main app (`python -m rmboost.cli` would import that a second time).
"""

from __future__ import annotations

import typer
from rich.console import Console

from rmboost.llm.types import FatalLLMError

err = Console(stderr=True, soft_wrap=True)  # messages stay on one line in logs
out = Console(soft_wrap=True)

# Errors a user can fix: one clear line, no traceback, non-zero exit.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FatalLLMError, OSError)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one red error line; the caller raises the returned Exit (`raise fail(...) from None`)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)
