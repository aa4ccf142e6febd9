"""What every option of `useg menu` shares: asking (ask, ask_until_valid, yes), printing an answer (say),
and starting `useg` as a child process (run_useg). The options call these through this module
(`prompts.ask(...)`), so a test that replaces one here replaces it for every option."""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Any, Callable

from rich.console import Console

from useg.errors import UsegError


class EndOfInput(Exception):
    """stdin closed (a pipe ran out): leave the menu cleanly."""


def ask(prompt: str) -> str:
    """One answer from the user; EndOfInput when stdin has closed."""
    try:
        answer = input(prompt).strip()
    except EOFError:
        print()
        raise EndOfInput from None
    if not sys.stdin.isatty():
        print(answer)  # a terminal echoes what was typed; echo piped answers so the transcript reads the same
    return answer


def ask_until_valid(prompt: str, parse: Callable[[str], Any], console: Console) -> Any:
    """Ask until `parse` accepts the answer (it raises ValueError or UsegError with the reason);
    None when the user just presses Enter."""
    while True:
        answer = ask(prompt)
        if not answer:
            return None
        try:
            return parse(answer)
        except (ValueError, UsegError) as err:
            say(console, str(err))


def say(console: Console, text: str) -> None:
    """Print plain text (no markup), one line per line however long: pipes and logs keep it whole."""
    console.print(text, markup=False, soft_wrap=True)


def enable_line_editing() -> None:
    """In a terminal, arrow keys edit the answer and recall earlier ones (readline), where Python has it."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401 - importing it is what makes input() use it
        except ImportError:
            pass


def run_useg(arguments: list[str], echo: bool = True) -> int:
    """Run training as a child process, so Ctrl+C there stops training, not the menu; `echo`: print the
    command first (option 1 has shown it already, to confirm it)."""
    if echo:
        print("$ " + shlex.join(["useg", *arguments]))  # a line that can be pasted into a shell
    with subprocess.Popen([sys.executable, "-m", "useg", *arguments]) as child:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                # The terminal sent Ctrl+C to the child too; it is saving its position, so wait for it.
                # (subprocess.call would SIGKILL it here, mid-save.)
                continue


def yes(prompt: str) -> bool:
    return ask(prompt).lower() in ("y", "yes")
