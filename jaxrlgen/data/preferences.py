"""Preference data: (prompt, chosen, rejected) triples as fixed-shape arrays.

  * `collate_triples`: token ids (or text) -> the padded batch every
    preference loss reads (`jaxrlgen.algos.preference`).
  * `label_pairs`: which of two samples is preferred, by the higher reward or
    by a Bradley-Terry draw P(a > b) = sigmoid((r_a - r_b) / temperature),
    the noisy labeller of synthetic-preference studies (Gao et al. 2022).
  * `pairs_from_samples`: builds triples from G sampled completions per
    prompt ranked by a reward (best vs worst, or a random pair).
  * `PreferenceData`: an in-memory set of triples with stateless batching
    (the batch of a step is a function of the seed and step, as in
    `pipeline.batch_indices`), so a resumed run reads the same batches.

All host-side NumPy; nothing here runs under jit.
"""

from collections.abc import Sequence
import dataclasses

import numpy as np

from jaxrlgen.data import pipeline
from jaxrlgen.data.tokenizer import ByteTokenizer

FIELDS = ('prompt', 'prompt_mask', 'chosen', 'chosen_mask', 'rejected',
          'rejected_mask')
STRATEGIES = ('best_worst', 'random')
LABELS = ('max', 'bradley_terry')


def _ids(x, tokenizer: ByteTokenizer, add_eos: bool) -> list[int]:
  if isinstance(x, (str, bytes)):
    return tokenizer.encode(x, add_eos=add_eos)
  return [int(i) for i in x]


def collate_triples(prompts: Sequence, chosen: Sequence, rejected: Sequence,
                    tokenizer: ByteTokenizer, max_prompt_len: int,
                    max_completion_len: int) -> dict[str, np.ndarray]:
  """Pads N triples to the arrays the preference losses read.

  Args:
    prompts: N prompts, each a string or a sequence of token ids.
    chosen, rejected: N completions each; a string gets EOS appended, a
      sequence of ids is taken as is (a sampled completion already holds its
      EOS).
    tokenizer: gives the ids and the padding.
    max_prompt_len: P (prompts are left-padded).
    max_completion_len: T (completions are right-padded).
  Returns:
    `prompt` i32[N, P], `prompt_mask` bool[N, P], `chosen` / `rejected`
    i32[N, T] and `chosen_mask` / `rejected_mask` bool[N, T].
  """
  if not len(prompts) == len(chosen) == len(rejected):
    raise ValueError(f'collate_triples needs as many prompts ({len(prompts)}) '
                     f'as chosen ({len(chosen)}) and rejected '
                     f'({len(rejected)}) completions.')
  out = {}
  out['prompt'], out['prompt_mask'] = tokenizer.pad_batch(
      [_ids(p, tokenizer, False) for p in prompts], max_prompt_len, 'left',
      length_name='max_prompt_len')
  for name, seqs in (('chosen', chosen), ('rejected', rejected)):
    out[name], out[f'{name}_mask'] = tokenizer.pad_batch(
        [_ids(s, tokenizer, True) for s in seqs], max_completion_len, 'right',
        length_name='max_completion_len')
  return out


def label_pairs(reward_a: np.ndarray, reward_b: np.ndarray,
                rng: np.random.Generator, *, label: str = 'max',
                temperature: float = 1.0) -> np.ndarray:
  """bool[N]: whether sample a is preferred to sample b.

  Args:
    reward_a, reward_b: f32[N] rewards of the two samples.
    rng: draws the Bradley-Terry labels.
    label: 'max' prefers the higher reward (ties to a); 'bradley_terry' draws
      a over b with probability sigmoid((reward_a - reward_b) / temperature).
    temperature: the Bradley-Terry noise scale (> 0).
  """
  if label not in LABELS:
    raise ValueError(f'label={label!r}; known: {LABELS}.')
  diff = np.asarray(reward_a, np.float64) - np.asarray(reward_b, np.float64)
  if label == 'max':
    return diff >= 0
  if temperature <= 0:
    raise ValueError(f'Bradley-Terry temperature={temperature} must be > 0.')
  p_a = 1.0 / (1.0 + np.exp(-diff / temperature))
  return rng.random(diff.shape) < p_a


def pairs_from_samples(rewards: np.ndarray, rng: np.random.Generator, *,
                       strategy: str = 'random', label: str = 'max',
                       temperature: float = 1.0):
  """Chooses two samples per prompt and labels which one is preferred.

  Args:
    rewards: f32[N, G] reward of each of G >= 2 samples of N prompts.
    rng: for the random pair and the Bradley-Terry labels.
    strategy: 'best_worst' pairs the highest- and lowest-reward samples;
      'random' two distinct samples drawn uniformly.
    label, temperature: as in `label_pairs`.
  Returns:
    (chosen i64[N], rejected i64[N]) sample indices in [0, G).
  """
  rewards = np.asarray(rewards)
  if rewards.ndim != 2 or rewards.shape[1] < 2:
    raise ValueError(f'pairs_from_samples needs rewards [N, G] with G >= 2 '
                     f'samples per prompt; got shape {rewards.shape}.')
  if strategy not in STRATEGIES:
    raise ValueError(f'strategy={strategy!r}; known: {STRATEGIES}.')
  n, g = rewards.shape
  if strategy == 'best_worst':
    a, b = np.argmax(rewards, axis=1), np.argmin(rewards, axis=1)
  else:
    a = rng.integers(0, g, size=n)
    # A uniform draw among the other G - 1 samples.
    b = (a + rng.integers(1, g, size=n)) % g
  rows = np.arange(n)
  a_wins = label_pairs(rewards[rows, a], rewards[rows, b], rng, label=label,
                       temperature=temperature)
  return np.where(a_wins, a, b), np.where(a_wins, b, a)


def triples_from_samples(prompt: np.ndarray, prompt_mask: np.ndarray,
                         completions: np.ndarray, completion_mask: np.ndarray,
                         chosen: np.ndarray,
                         rejected: np.ndarray) -> dict[str, np.ndarray]:
  """Gathers the chosen and rejected samples into a triple batch.

  Args:
    prompt: i32[N, P], prompt_mask: bool[N, P] the prompts.
    completions: i32[N, G, T], completion_mask: bool[N, G, T] their samples.
    chosen, rejected: [N] sample indices (from `pairs_from_samples`).
  """
  rows = np.arange(prompt.shape[0])
  completions, completion_mask = np.asarray(completions), np.asarray(
      completion_mask)
  return {'prompt': np.asarray(prompt), 'prompt_mask': np.asarray(prompt_mask),
          'chosen': completions[rows, chosen],
          'chosen_mask': completion_mask[rows, chosen],
          'rejected': completions[rows, rejected],
          'rejected_mask': completion_mask[rows, rejected]}


@dataclasses.dataclass(frozen=True)
class PreferenceData:
  """N triples in memory (a dict of arrays with leading axis N).

  Attributes:
    arrays: the triple fields (and any extra per-pair fields, e.g. the
      labeller's rewards), each with leading axis N.
  """

  arrays: dict

  def __post_init__(self):
    missing = [f for f in FIELDS if f not in self.arrays]
    if missing:
      raise ValueError(f'Preference data lacks {missing}; it needs {FIELDS}.')
    sizes = {k: len(v) for k, v in self.arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f'Preference fields differ in length: {sizes}.')

  def __len__(self) -> int:
    return len(self.arrays['prompt'])

  def take(self, indices) -> dict[str, np.ndarray]:
    return {k: v[np.asarray(indices)] for k, v in self.arrays.items()}

  def split(self, num_heldout: int) -> tuple['PreferenceData',
                                             'PreferenceData']:
    """(first N - num_heldout triples, last num_heldout)."""
    if not 0 < num_heldout < len(self):
      raise ValueError(f'Cannot hold out {num_heldout} of {len(self)} '
                       'preference pairs.')
    cut = len(self) - num_heldout
    return (PreferenceData(self.take(np.arange(cut))),
            PreferenceData(self.take(np.arange(cut, len(self)))))

  def batch(self, step: int, batch_size: int, seed: int,
            process_index: int = 0, process_count: int = 1):
    """This process's share of the shuffled batch of `step`."""
    return self.take(pipeline.batch_indices(len(self), batch_size, step, seed,
                                            process_index, process_count))
