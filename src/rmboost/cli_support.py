"""What every `rmboost` command module shares: the consoles and how a user's error is reported.

Kept apart from rmboost.cli so that command modules (rm, align, analysis) can import it without
importing the main app (`python -m rmboost.cli` would import that a second time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def run_training(train: Callable[[Any, Any], dict[str, Any]], cfg: Any, show: Callable[[dict[str, Any]], None]) -> None:
    """`train(cfg, err)` for train-rm and dpo, then `show(summary)` on the main process only.

    Under `accelerate launch` every process runs the command; the user gets one summary, not one
    per process (`rmboost.training.hardware` says which process a summary is from). Ctrl-C exits
    130 with nothing saved; an error a user can fix is one line and exit code 2.
    """
    try:
        summary = train(cfg, err)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: nothing was saved")
        raise typer.Exit(130) from None
    except USER_ERRORS as exc:
        raise fail(str(exc)) from None
    if summary.get("main_process", True):
        show(summary)
