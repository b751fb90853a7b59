"""Per-item host rewards that misbehave, for the process backend's tests.

A module of its own, importing nothing heavy, so that worker processes load
it quickly (`tests.rewards.bad_items:item`)."""

import ctypes
import os
import time

import numpy as np

KINDS = ('ok', 'raise', 'nan', 'string', 'none', 'exit', 'segfault',
         'gil_loop', 'sleep', 'array')


def item(i) -> float:
  """Item i behaves as `KINDS[i % len(KINDS)]`; the good ones return i."""
  kind = KINDS[int(i) % len(KINDS)]
  if kind == 'raise':
    raise RuntimeError('checker crashed')
  if kind == 'nan':
    return float('nan')
  if kind == 'string':
    return 'not a number'
  if kind == 'none':
    return None
  if kind == 'exit':
    os._exit(3)
  if kind == 'segfault':
    ctypes.string_at(0)
  if kind == 'gil_loop':
    while True:
      pass
  if kind == 'sleep':
    time.sleep(1e6)
  if kind == 'array':
    return np.array([float(i)])
  return float(i)


def hang(unused_i) -> float:
  time.sleep(1e6)
  return 0.0


def ok_text(completion: str, answer: str) -> float:
  return float(completion.strip() == answer)
