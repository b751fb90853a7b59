"""Training curves as PNG files, drawn from `metrics.jsonl` records."""

from collections.abc import Sequence
import io
import math
import os
import uuid
from typing import Any

from etils import epath
import matplotlib

# Runs are headless (servers, TPU VMs, CI): select the file-only backend before
# pyplot is imported, so no display is ever looked for.
matplotlib.use('Agg')
# pylint: disable-next=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt


def _series(records: Sequence[dict[str, Any]], key: str,
            x_key: str) -> tuple[list[float], list[float]]:
  """The (x, y) points of `key`, from the records that have both values."""
  xs, ys = [], []
  for record in records:
    x, y = record.get(x_key), record.get(key)
    if x is None or y is None:
      continue
    xs.append(float(x))
    ys.append(float(y))
  return xs, ys


def plot_metrics(records: Sequence[dict[str, Any]],
                 keys: Sequence[str],
                 path: str | os.PathLike[str],
                 *,
                 title: str | None = None,
                 x_key: str = 'step') -> epath.Path:
  """Plots each metric of `keys` against `x_key` on its own subplot.

  Records lacking a key (metrics logged at different intervals) are skipped
  for that key; NaN values leave a gap in the line. A key absent from every
  record gets no subplot; when no key has data the PNG still gets written,
  with a note saying so, so that the file a run promises always exists.

  Args:
    records: as returned by `writers.read_metrics`.
    keys: the metric names to plot, in subplot order.
    path: the PNG file to write (local or remote).
    title: a title over all subplots.
    x_key: the record field for the x axis.

  Returns:
    `path` as an `epath.Path`.
  """
  series = {}
  for key in keys:
    xs, ys = _series(records, key, x_key)
    if xs:
      series[key] = (xs, ys)

  num_rows = max(len(series), 1)
  fig, axes = plt.subplots(num_rows, 1, sharex=True, squeeze=False,
                           figsize=(7, 2.2 * num_rows + 0.6))
  try:
    axes = axes[:, 0]
    if not series:
      axes[0].text(0.5, 0.5, f'no data for {", ".join(keys) or "(no keys)"}',
                   ha='center', va='center', transform=axes[0].transAxes)
      axes[0].set_axis_off()
    for ax, (key, (xs, ys)) in zip(axes, series.items()):
      # A single point draws no line segment; a marker keeps it visible.
      ax.plot(xs, ys, marker='.' if len(xs) < 50 else None, linewidth=1.2)
      ax.set_ylabel(key)
      ax.grid(True, alpha=0.3)
      finite = [y for y in ys if math.isfinite(y)]
      if not finite:
        ax.text(0.5, 0.5, 'no finite values', ha='center', va='center',
                transform=ax.transAxes)
    if series:
      axes[-1].set_xlabel(x_key)
    if title:
      fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)
  finally:
    # pyplot keeps every open figure alive; a long run that plots repeatedly
    # would otherwise leak them.
    plt.close(fig)


def save(fig, path) -> epath.Path:
  """Writes `fig` as a PNG at `path`, whole or not at all; returns the path.

  A run killed mid-write leaves the previous file (or none), never a
  truncated PNG that a resumed run would keep. The caller closes `fig`.
  """
  # Rendering to memory and writing the bytes through epath also works for
  # remote paths, which matplotlib cannot open itself.
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f'.{path.name}.tmp.{uuid.uuid4().hex}'
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)
  return path
