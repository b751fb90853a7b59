"""Rewards given by import path, told apart by their signatures.

`config.reward.fn='my_pkg.scoring:score'` (or `'path/to/file.py:score'`), and
any name in `config.reward.terms`, may name one of three things:

1. a per-item Python function `fn(completion: str, **fields) -> float`: its
   first positional parameter is named `completion`. It runs on the host
   through the reward bridge (`host.TextReward`): each completion is
   decoded, and the function gets the record's fields it names (all of them
   if it has `**fields`; text fields as strings, numbers as numbers) and
   `prompt=` (the decoded prompt) if it names `prompt`. An item whose call
   raises, returns a non-finite value or runs past `timeout_s` gets
   `penalty` and is counted as failed (`reward/host_failures`); the run goes
   on.
2. a JAX reward `(rollout, batch) -> f32[B]`: two positional parameters, the
   first named `rollout` or the second `batch`. It is used as it is.
3. a factory `(**context) -> reward`, as registered rewards are: no
   positional parameter without a default. It is called with the run's
   context (`tokenizer=`, `fields=`, options).

Anything else, a required parameter that is not one of the task's fields,
or a factory that needs a context key the run lacks is an error that names
the flag, before any compute.
"""

import inspect
from typing import Any, Callable, Mapping, Sequence

from jaxrlgen.rewards import host

FLAG = 'config.reward.fn / config.reward.terms'
# Context keys that are options of the host bridge, not factory inputs.
BRIDGE_OPTIONS = ('penalty', 'timeout_s', 'max_workers', 'backend')

ITEM, JAX, FACTORY = 'item', 'jax', 'factory'


def _signature(fn) -> inspect.Signature | None:
  try:
    return inspect.signature(fn)
  except (TypeError, ValueError):  # Some builtins have none.
    return None


def _positional(sig: inspect.Signature) -> list[inspect.Parameter]:
  return [p for p in sig.parameters.values()
          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


FORMS = ("fn(completion: str, **fields) -> float, a JAX reward "
         "(rollout, batch) -> f32[B], or a factory (**context) -> reward")


def kind(fn, name: str, context_keys: Sequence[str] | None = None) -> str:
  """ITEM, JAX or FACTORY: what `fn` (named `name` in the config) is.

  A factory may also take context keys as positional parameters
  (`make(tokenizer)`): those in `context_keys` (None: any name) count as
  keywords.

  Raises:
    ValueError: not callable, or a signature of none of the three forms.
  """
  if not callable(fn):
    raise ValueError(f'{FLAG}: {name!r} is a {type(fn).__name__}, not a '
                     f'function; give {FORMS}.')
  sig = _signature(fn)
  if sig is None:
    raise ValueError(f'{FLAG}: {name!r} has no inspectable signature; wrap '
                     f'it in a Python function: {FORMS}.')
  positional = _positional(sig)
  if positional and positional[0].name == 'completion':
    return ITEM
  required = [p for p in positional if p.default is p.empty]
  if len(required) == 2 and (required[0].name == 'rollout'
                             or required[1].name == 'batch'):
    return JAX
  if not required or (context_keys is not None
                      and all(p.name in context_keys for p in required)):
    return FACTORY
  raise ValueError(
      f'{FLAG}: {name!r} has the signature {name.rpartition(":")[2]}{sig}, '
      f'which is none of the accepted forms: {FORMS}. A per-item function '
      "names its first parameter 'completion'.")


def item_fields(fn, name: str, fields: Sequence[str] | None
                ) -> tuple[tuple[str, ...], bool]:
  """(the fields `fn` gets, whether it gets `prompt=`) for a per-item
  function, checked against the task's reward `fields` (None: unknown, no
  check; the parameters it names are passed).

  Raises:
    ValueError: a required parameter is neither a field nor `prompt`.
  """
  params = list(inspect.signature(fn).parameters.values())[1:]
  takes_all = any(p.kind == p.VAR_KEYWORD for p in params)
  named = [p for p in params if p.kind in (
      p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)]
  with_prompt = any(p.name == 'prompt' for p in named)
  known = None if fields is None else set(fields)
  missing = [p.name for p in named if p.name != 'prompt'
             and p.default is p.empty
             and (p.kind == p.POSITIONAL_ONLY
                  or (known is not None and p.name not in known))]
  if missing:
    raise ValueError(
        f'{FLAG}: {name!r} requires the parameter(s) {missing}, which '
        + ('are positional-only (a field is passed by name)' if known is None
           else f'are not fields of the task\'s records (they have '
           f'{sorted(known)}, and prompt)')
        + '; give them a default or read fields that exist.')
  if takes_all and fields is not None:
    chosen = tuple(fields)
  else:
    chosen = tuple(p.name for p in named if p.name != 'prompt'
                   and (known is None or p.name in known))
  return chosen, with_prompt


def from_object(obj: Callable[..., Any], name: str,
                context: Mapping[str, Any]):
  """The reward `(rollout, batch) -> f32[B]` an import path names.

  Args:
    obj: what the path names.
    name: the path, for messages.
    context: the run's context: `tokenizer` (needed by a per-item function),
      `fields` (the task's reward fields, or None), `penalty`, `timeout_s`,
      `max_workers`, `backend` (the host bridge's options) and whatever
      factories read.
  """
  what = kind(obj, name, tuple(context))
  if what == JAX:
    return obj
  if what == FACTORY:
    sig = inspect.signature(obj)
    takes_all = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    needed = [p.name for p in sig.parameters.values()
              if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
              and p.default is p.empty and p.name not in context]
    if needed:
      raise ValueError(f'{FLAG}: the factory {name!r} needs {needed}, which '
                       f'this run does not give (it gives {sorted(context)}).')
    accepted = (context if takes_all else
                {k: v for k, v in context.items() if k in sig.parameters})
    return obj(**accepted)
  if context.get('tokenizer') is None:
    raise ValueError(f'{FLAG}: the per-item reward {name!r} decodes '
                     'completions and needs tokenizer= in the context.')
  fields, with_prompt = item_fields(obj, name, context.get('fields'))
  options = {k: context[k] for k in BRIDGE_OPTIONS
             if context.get(k) is not None}
  return host.text_reward(obj, context['tokenizer'], fields=fields,
                          with_prompt=with_prompt, **options)
