"""Errors a user can cause. The CLI prints them as one line (no traceback unless --debug)."""

from __future__ import annotations


class Gemma4Error(Exception):
    """A problem with the user's input or environment, described for the user."""


class CheckpointError(Gemma4Error):
    """A checkpoint file or tensor is not what it must be.

    The message names the file, the tensor, the expected and the found value.
    """

    def __init__(self, file: str, tensor: str | None, expected: str, found: str, hint: str = "") -> None:
        self.file, self.tensor, self.expected, self.found = file, tensor, expected, found
        where = f"{file}: tensor '{tensor}'" if tensor else f"{file}"
        msg = f"{where}: expected {expected}, found {found}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class MissingToolError(Gemma4Error):
    """A tool or package needed for this step is not installed."""
