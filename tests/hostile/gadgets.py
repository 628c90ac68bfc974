"""Classes a user might vouch for (--allow) whose restore misbehaves: they raise SystemExit or
read stdin while a checkpoint loads. Used by tests/test_fail_closed.py to prove every load runs
sandboxed (BaseException becomes a finding; stdin reads as /dev/null). Nothing here runs code
from a file: the behaviour is in the class, as a buggy or hostile library class would be."""

from __future__ import annotations


class Exiter:
    """__setstate__ raises SystemExit, as sys.exit() in a payload would."""

    def __setstate__(self, state):
        raise SystemExit(0)


class Asker:
    """__setstate__ reads a line from stdin, as builtins.input() in a payload would."""

    def __setstate__(self, state):
        self.answer = input()
