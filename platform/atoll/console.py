"""The two terminals Atoll writes to: ``console`` (stdout: results) and ``err_console`` (stderr: progress,
warnings, errors). One pair, shared by the CLI and the library's live views, so that what a command shows
and what the quickstart shows go to the same place."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
