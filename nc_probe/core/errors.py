"""Errors a user can act on.

Every problem with the user's input raises :class:`InputError`: one line that names the file (when there is one)
and says what to do. The CLI prints it and exits with code 2.

A message names a setting as a placeholder, ``{eps2}`` or ``{arch=mypkg.models:net}``, because the same error
reaches two kinds of reader: a notebook user, who passed ``eps2=`` to a function, and a command-line user, who typed
``--eps2``. ``str(error)`` spells the parameter (``eps2``, ``arch='mypkg.models:net'``); the CLI renders the same
error with its flags (``--eps2``, ``--arch mypkg.models:net``) through :meth:`InputError.render`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from nc_probe.core.text import printable

#: Fixes that start with a command are typed as written, not capitalized as a sentence.
COMMANDS = ("pip ", "python ", "nc-probe ", "torchrun ", "--", "{")
#: ``{setting}`` or ``{setting=value}``; a doubled brace (``{{``, as :func:`nc_probe.core.text.quoted` writes the
# braces of a : file's text) is a literal brace, never a placeholder.
PLACEHOLDER = re.compile(r"(?<!\{)\{([a-z][a-z0-9_]*)(?:=([^{}]*))?\}(?!\})")

#: How a placeholder is spelled: ``(parameter, value or None) -> text``.
Namer = Callable[[str, str | None], str]


def parameter_name(param: str, value: str | None) -> str:
    """The Python spelling of a setting: ``eps2``, ``arch='mypkg:net'``."""
    if value is None:
        return param
    return f"{param}={value}" if value in ("True", "False") or _is_number(value) else f"{param}={value!r}"


def spell(text: str, name: Namer = parameter_name) -> str:
    """``text`` with each ``{setting}`` placeholder spelled by ``name`` (messages and report warnings alike)."""
    text = PLACEHOLDER.sub(lambda m: name(m.group(1), m.group(2)), text)
    return text.replace("{{", "{").replace("}}", "}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class InputError(ValueError):
    """Bad input: the message is complete, one line, and says how to fix it (see the module docstring)."""

    def __init__(self, message: str, *, path: object | None = None, fix: str | None = None):
        self.message = message
        self.path = path
        self.fix = fix
        super().__init__(self.render())

    def render(self, name: Namer = parameter_name) -> str:
        """The message with each ``{setting}`` placeholder spelled by ``name``."""
        parts = [f"{self.path}:"] if self.path is not None else []
        parts.append(spell(self.message, name).rstrip("."))
        text = " ".join(parts) + "."
        if self.fix:
            fix = self.fix.rstrip(".")
            starts_with_command = fix.startswith(COMMANDS)
            fix = spell(fix, name)
            if not starts_with_command:  # a sentence starts upper case; a command is typed as written
                fix = fix[:1].upper() + fix[1:]
            text += " " + fix + "."
        return printable(text)  # file text inside a message must not drive the terminal or add lines

    @property
    def parameters(self) -> list[str]:
        """The settings the message names."""
        return [m.group(1) for m in PLACEHOLDER.finditer(f"{self.message} {self.fix or ''}")]
