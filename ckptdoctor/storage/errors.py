"""The two failures of storage access: a setup problem (StorageError) and a failed read
(RemoteReadError), each with its stable finding code."""

from __future__ import annotations

from ..codes import Code


class StorageError(Exception):
    """A remote access problem: one line, a stable code (CK010-CK029)."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code


class RemoteReadError(OSError):
    """A ranged read failed; carries the finding code for the file (CK012/CK013/CK014/CK016)."""

    strerror: str  # always the message (OSError's may be None): findings and failures need one

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code
        self.strerror = message
