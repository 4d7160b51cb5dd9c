"""Errors a user can act on.

Every problem with the user's input raises :class:`InputError`; the CLI prints its message as one line and exits
with code 2. The message names the file (when there is one) and says what to do.
"""

from __future__ import annotations


COMMANDS = ("pip ", "python ", "nc-probe ", "torchrun ", "--")


class InputError(ValueError):
    """Bad input: the message is complete, one line, and says how to fix it."""

    def __init__(self, message: str, *, path: object | None = None, fix: str | None = None):
        parts = []
        if path is not None:
            parts.append(f"{path}:")
        parts.append(message.rstrip("."))
        text = " ".join(parts) + "."
        if fix:
            fix = fix.rstrip(".")
            if not fix.startswith(COMMANDS):  # a sentence starts upper case; a command is typed as written
                fix = fix[:1].upper() + fix[1:]
            text += " " + fix + "."
        super().__init__(text)
        self.path = path
