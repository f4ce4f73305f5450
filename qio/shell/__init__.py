"""The interactive shell: qemu-io's command loop with a modern line editor (prompt_toolkit).

Started by the command line when standard input is a terminal and there is no ``-c``.  Each
command goes through ``Session.run_line``, the engine the ``-c`` path and the piped loop use,
so commands, outputs and exit status are the same; the shell only adds comfort around it:

* completion (``qio.shell.completion``) with help text for the highlighted entry;
* history kept in ``$XDG_STATE_HOME/qio/history`` (``~/.local/state/qio/history``), Ctrl-R
  search, suggestions from history (→ accepts);
* several commands on one line, separated by ``;`` (``\\;`` for a literal semicolon);
* a bottom toolbar: the open image, its driver graph, size, mode, blkverify mismatches;
* Ctrl-C while a command runs asks it to stop at its next chunk (see ``ctrl_c_cancels``);
  at the prompt it clears the line; Ctrl-D or ``quit`` leaves.
"""

from __future__ import annotations

import errno
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import ColorDepth, Output, create_output
from prompt_toolkit.styles import Style

from qio.block.coroutine import scheduler
from qio.commands import table
from qio.session import Session
from qio.shell.completion import QioCompleter
from qio.shell.history import history_path
from qio.shell.lines import current_command, split_commands
from qio.shell.toolbar import toolbar_text

PROMPT = "qio> "
IDLE_HINT = "TAB completes · ↑ / Ctrl-R history · ';' separates commands · Ctrl-D quits"

STYLE = Style.from_dict(
    {
        "prompt": "bold",
        "bottom-toolbar": "noreverse bg:ansiblack ansiwhite",
        "bottom-toolbar.hint": "noreverse bg:ansiblack ansibrightblack",
    }
)


class QuietFileHistory(FileHistory):
    """File history that keeps working in memory when the file cannot be written."""

    def __init__(self, filename: str) -> None:
        super().__init__(filename)
        self.failed = False

    def store_string(self, string: str) -> None:
        if self.failed:
            return
        try:
            super().store_string(string)
        except OSError:
            self.failed = True


def open_history(session: Session, path: Path) -> History:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    except OSError as exc:
        session.warn_report(f"history not kept: {path}: {exc.strerror}")
        return InMemoryHistory()
    return QuietFileHistory(str(path))


@contextmanager
def ctrl_c_cancels(session: Session) -> Iterator[None]:
    """While a command runs, Ctrl-C (SIGINT) asks it to stop instead of killing qio.

    The first Ctrl-C sets ``session.cancel``: streaming loops stop at their next chunk
    boundary, report what they did and return; the image is consistent.  A second Ctrl-C
    (a command that never checks, such as ``sleep``) raises KeyboardInterrupt at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if session.cancel.requested:
            raise KeyboardInterrupt
        session.cancel.request()

    previous = signal.signal(signal.SIGINT, on_sigint)
    session.cancel.armed = True
    try:
        yield
    finally:
        session.cancel.armed = False
        signal.signal(signal.SIGINT, previous)


def run_shell_line(session: Session, line: str) -> None:
    """Run the commands of one shell line; a Ctrl-C stops the rest of the line."""
    for command in split_commands(line):
        session.cancel.reset()
        try:
            with ctrl_c_cancels(session):
                session.run_line(command)
        except KeyboardInterrupt:
            session.r.flush()
            session.error_report("interrupted")
            session.last_error = -errno.EINTR  # the command did not complete
            break
        if session.quit or session.cancel.requested:
            break
    session.cancel.reset()


def make_prompt_session(
    session: Session,
    *,
    input: Input | None = None,
    output: Output | None = None,
    history_file: Path | None = None,
) -> PromptSession[str]:
    history = open_history(session, history_file or history_path())
    if output is None:
        # With stdout redirected (``qio img > log``) the editor draws on the terminal that
        # stderr still is, so the file receives command output only.
        output = create_output(always_prefer_tty=True)
    prompt: PromptSession[str] = PromptSession(
        history=history,
        completer=QioCompleter(session),
        complete_while_typing=False,
        auto_suggest=AutoSuggestFromHistory(),
        style=STYLE,
        color_depth=None if session.r.styled else ColorDepth.DEPTH_1_BIT,
        input=input,
        output=output,
    )

    def columns() -> int:
        return prompt.app.output.get_size().columns

    def bottom_toolbar() -> StyleAndTextTuples:
        return [
            ("class:bottom-toolbar", " " + toolbar_text(session, columns() - 1)),
            ("class:bottom-toolbar", "\n"),
            ("class:bottom-toolbar.hint", " " + hint_text(prompt)),
        ]

    prompt.bottom_toolbar = bottom_toolbar
    return prompt


def hint_text(prompt: PromptSession[str]) -> str:
    """Help for the highlighted completion, else the synopsis of the command being typed."""
    buffer = prompt.default_buffer
    state = buffer.complete_state
    if state is not None and state.current_completion is not None:
        c = state.current_completion
        meta = c.display_meta_text
        return f"{c.display_text}: {meta}" if meta else c.display_text
    doc = buffer.document
    # the command the cursor is in (the cursor may sit at its start, after a Ctrl-R search)
    text = current_command(doc.text_before_cursor) + doc.text_after_cursor.split(";")[0]
    words = [w for w in text.split(" ") if w]  # qemu-io splits on spaces only
    if words:
        cmd = table.find(words[0])
        if cmd is not None:
            return cmd.help_line(words[0])
    return IDLE_HINT


def run_shell(
    session: Session,
    *,
    input: Input | None = None,
    output: Output | None = None,
    history_file: Path | None = None,
) -> None:
    """Read and run commands until ``quit``, Ctrl-D or the end of input."""
    session.interactive = True
    prompt = make_prompt_session(session, input=input, output=output, history_file=history_file)
    while not session.quit:
        scheduler.poll()  # report asynchronous requests that completed meanwhile
        session.r.flush()
        try:
            line = prompt.prompt([("class:prompt", PROMPT)])
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt: the line is dropped
        except EOFError:
            session.r.out("\n")  # as qemu-io: Ctrl-D leaves the terminal on a fresh line
            break
        try:
            run_shell_line(session, line)
        except KeyboardInterrupt:
            continue  # Ctrl-C in the instant between two commands of the line
    session.r.flush()
