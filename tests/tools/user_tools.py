"""Tools of a user's own, named by import path in the tests: good ones and
ones that misbehave (they run in worker processes)."""

import os


def echo(text: str) -> str:
  """Returns its input reversed."""
  return text[::-1]


def hang(text: str) -> str:
  """Loops forever holding the GIL: no thread could stop it."""
  del text
  while True:
    pass


def crash(text: str) -> str:
  """Ends its interpreter at once, as a segfault in an extension would."""
  del text
  os._exit(3)


def fail(text: str) -> str:
  raise KeyError(text)


def flood(text: str) -> str:
  """Returns a megabyte."""
  return text * (1 << 20)


def number(text: str) -> str:
  return len(text)  # Not a string.
