"""The generic text-RL recipe: any task, model and algorithm, end to end.

  1. Supervised warm start (maximum likelihood on the task's reference
     completions), its own run under `workdir/sft/` (skipped when
     `config.sft.steps` is 0 or its final checkpoint exists).
  2. RL with the algorithm `config.algo.name` against `config.reward` on the
     task `config.task.name`, under `workdir/`: metrics.jsonl, tensorboard/,
     checkpoints/, summary.json and training.png. A run restarted with the
     same workdir resumes.

Held-out accuracy is the mean reward of greedy completions; it is evaluated
before RL (`eval/accuracy` at step 0), every `eval.every` steps and at the
end. Every section of the config is read through its schema (`Settings`)
before anything is computed.
"""

import contextlib
import dataclasses
import functools
import json
import time
from typing import Any, ClassVar

import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxrlgen import algos
from jaxrlgen import export as export_lib
from jaxrlgen.algos import base as algo_base
from jaxrlgen import parallel
from jaxrlgen import registry
from jaxrlgen import rewards
from jaxrlgen import schema
from jaxrlgen import tasks
from jaxrlgen import tools as tools_lib
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.data import pipeline
from jaxrlgen.data import scored
from jaxrlgen.data.hf_tokenizer import HFTokenizer
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.envs import multiturn
from jaxrlgen.envs import search
from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy
from jaxrlgen.policies import lora as lora_lib
from jaxrlgen.recipes import checks
from jaxrlgen.train import async_loop
from jaxrlgen.train import checkpoint as checkpoint_lib
from jaxrlgen.train import loop
from jaxrlgen.train import optim
from jaxrlgen.train import plots
from jaxrlgen.train import step as step_lib
from jaxrlgen.train import workdir as workdir_lib
from jaxrlgen.train import writers

PLOT_KEYS = ('reward/mean', 'eval/accuracy', 'kl', 'entropy',
             'completions/mean_length', 'grad_norm')
REFERENCE_DTYPES = ('float32', 'bfloat16')
LOOPS = ('sync', 'async')
SOURCES = ('online', 'offline')
SAMPLERS = ('policy', 'mcts')
SAMPLING_METHODS = ('gumbel', 'inverse_cdf')


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The top-level fields of the config."""

  SPECIAL: ClassVar[schema.Special] = {
      'seed': schema.Means(zero='a seed like any other'),
      'total_steps': schema.Means(
          zero='no RL steps: the warm start and the evaluations only'),
      'checkpoint_every': schema.Means(zero='checkpoints at the end only')}

  recipe: str = 'text_rl'  # Registered name or import path of the recipe.
  seed: int = 0  # Seeds init, data order and sampling.
  total_steps: int = 2000  # RL steps.
  log_every: int = 10  # Steps between metric fetches and log lines.
  # Steps between checkpoints (and at the end); 0: at the end only.
  checkpoint_every: int = 250
  max_checkpoints: int = 2  # Checkpoints kept.
  loop: str = 'sync'  # sync | async (actor lags learner, IMPALA-style).
  # A step with non-finite rewards, loss or gradient skips its update;
  # skip: the run stops after max_nonfinite_steps of them in a row; stop:
  # after the first.
  nonfinite: str = 'skip'
  max_nonfinite_steps: int = 10  # Skipped steps in a row that stop a run.

  def __post_init__(self):
    schema.non_negative(self, 'seed', 'total_steps', 'checkpoint_every')
    schema.positive(self, 'log_every', 'max_checkpoints',
                    'max_nonfinite_steps')
    schema.one_of(self, 'loop', LOOPS)
    schema.one_of(self, 'nonfinite', loop.NONFINITE_POLICIES)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """`config.data`: where data is kept, and the padded lengths."""

  data_dir: str = ''  # TFDS data_dir; '' means WORKDIR/data.
  max_prompt_len: int = 8  # Prompt tokens (left-padded).
  max_target_len: int = 4  # Supervised completion tokens incl. EOS.

  def __post_init__(self):
    schema.positive(self, 'max_prompt_len', 'max_target_len')


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """`config.sft`: the supervised warm start."""

  SPECIAL: ClassVar[schema.Special] = {
      'steps': schema.Means(zero='no warm start')}

  steps: int = 600  # Warm-start steps; 0: none.
  batch_size: int = 64  # Examples per warm-start step.
  log_every: int = 50  # Steps between warm-start log lines.
  optimizer: optim.OptimizerConfig = optim.OptimizerConfig(
      3e-3, 'cosine', warmup_steps=10)

  def __post_init__(self):
    schema.non_negative(self, 'steps')
    schema.positive(self, 'batch_size', 'log_every')


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """`config.rl`: sampling and the RL optimizer."""

  SPECIAL: ClassVar[schema.Special] = {
      'top_k': schema.Means(zero='no top-k truncation'),
      'pack_rows': schema.Means(zero='no packing: B padded rows')}

  batch_size: int = 256  # Sequences per step (prompts x group_size).
  group_size: int = 8  # Samples per prompt, sharing one prefill.
  max_new_tokens: int = 6  # Completion budget.
  temperature: float = 1.0  # Sampling temperature.
  top_k: int = 0  # 0: off.
  top_p: float = 1.0  # 1: off.
  # How a draw is made (both exact): 'gumbel' or 'inverse_cdf' (one random
  # number per sequence: faster on CPU).
  sampling_method: str = 'gumbel'
  # Decode on a KV cache grown in this many segments (exact; fewer attention
  # reads for long completions, one compiled loop each).
  cache_segments: int = 1
  logprob_chunk: int = 128  # Time steps per log-prob chunk.
  # Teacher-forced passes pack the batch's real tokens into this many rows
  # of prompt + completion slots, so that their cost follows the real tokens
  # (exact up to rounding; a batch that does not fit runs unpacked). 0: off.
  pack_rows: int = 0
  # Reference model copy: float32, or bfloat16 to halve its memory.
  reference_dtype: str = 'float32'
  optimizer: optim.OptimizerConfig = optim.OptimizerConfig(5e-4)
  # online: sample each step's batch; offline: read config.offline's dataset
  # of scored sequences instead (the learner step only).
  source: str = 'online'
  # Which decoder produces the training rollouts: policy (sampling) | mcts
  # (config.mcts).
  sampler: str = 'policy'

  def __post_init__(self):
    schema.positive(self, 'batch_size', 'group_size', 'max_new_tokens',
                    'temperature', 'cache_segments', 'logprob_chunk')
    schema.non_negative(self, 'top_k', 'pack_rows')
    schema.in_range(self, 'top_p', 0.0, 1.0)
    schema.positive(self, 'top_p')
    schema.one_of(self, 'sampling_method', SAMPLING_METHODS)
    schema.one_of(self, 'reference_dtype', REFERENCE_DTYPES)
    schema.one_of(self, 'source', SOURCES)
    schema.one_of(self, 'sampler', SAMPLERS)
    schema.divisible(self, 'batch_size', 'group_size')

  @property
  def num_prompts(self) -> int:
    return self.batch_size // self.group_size


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
  """`config.offline` (with `rl.source='offline'`): the dataset, sampled once
  from the warm-started policy, scored by config.reward, kept in the workdir."""

  num_prompts: int = 2048  # Training prompts in the dataset.
  samples_per_prompt: int = 8  # Completions per prompt (rows of one group).
  temperature: float = 1.0  # Sampling temperature of the behaviour policy.
  chunk_prompts: int = 256  # Prompts sampled per jitted call.

  def __post_init__(self):
    schema.positive(self, 'num_prompts', 'samples_per_prompt', 'temperature',
                    'chunk_prompts')
    schema.divisible(self, 'num_prompts', 'chunk_prompts')


HOST_BACKENDS = ('thread', 'process')


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """`config.reward`: a weighted sum of rewards."""

  SPECIAL: ClassVar[schema.Special] = {
      'target_length': schema.Means(zero='none (length_penalty needs one)'),
      'tolerance': schema.Means(zero='exact answers only'),
      'penalty': schema.Means(zero='a failed item scores 0',
                              negative='a failed item scores this'),
      'timeout_s': schema.Means(zero='no time limit'),
      'max_workers': schema.Means(zero="the backend's default number"),
      'turn_discount': schema.Means(zero="only the first turn's reward counts")}

  # (reward name or import path, weight) pairs, or the same written as a
  # dict literal ("{'my.mod:score': 1.0, 'format': 0.1}"); (): the task's
  # default reward (or `fn`).
  terms: rewards.Terms | str = ()
  # Import path of fn(completion, **fields) -> float (or of a JAX reward or
  # a factory): the whole reward, weight 1, in place of `terms`; '': none.
  fn: str = ''
  target_length: int = 0  # Used by the length_penalty reward.
  answer_field: str = 'answer'  # The field verifiers compare against.
  format_pattern: str = ''  # regex_format's pattern (re.search, DOTALL).
  tolerance: float = 1e-6  # numeric_answer: |x - y| <= tol * max(1, |y|).
  penalty: float = 0.0  # Reward of a host item that raises or times out.
  timeout_s: float = 30.0  # Seconds a host reward item may run; 0: no limit.
  # Where host reward items run: thread (cheap; a hung item is abandoned,
  # not killed) or process (a pool of workers, replaced when an item hangs
  # or crashes the interpreter: nothing leaks).
  backend: str = 'thread'
  max_workers: int = 0  # Threads or worker processes; 0: the default.
  tests_field: str = 'tests'  # unit_tests: the field holding the asserts.
  sandbox_timeout_s: float = 5.0  # unit_tests: seconds per program.
  sandbox_memory_mb: int = 512  # unit_tests: memory per program.
  # turn_rewards: weight of turn k's reward is turn_discount ** k.
  turn_discount: float = 1.0

  def __post_init__(self):
    schema.non_negative(self, 'target_length', 'tolerance', 'timeout_s',
                        'max_workers')
    schema.in_range(self, 'turn_discount', 0.0, 1.0)
    schema.one_of(self, 'backend', HOST_BACKENDS)
    schema.positive(self, 'sandbox_timeout_s', 'sandbox_memory_mb')
    if isinstance(self.terms, str):  # From the command line.
      try:
        terms = rewards.parse_terms(self.terms, 'terms')
      except ValueError as e:
        raise schema.FieldError('terms', '=' + str(e).split('=', 1)[1]) from None
      object.__setattr__(self, 'terms', terms)

  def context(self) -> dict:
    """What reward factories read besides the tokenizer and fields."""
    return dict(target_length=self.target_length,
                answer_field=self.answer_field,
                format_pattern=self.format_pattern, tolerance=self.tolerance,
                penalty=self.penalty, timeout_s=self.timeout_s or None,
                backend=self.backend, max_workers=self.max_workers or None,
                tests_field=self.tests_field,
                sandbox_timeout_s=self.sandbox_timeout_s,
                sandbox_memory_mb=self.sandbox_memory_mb,
                turn_discount=self.turn_discount)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`config.eval`: held-out greedy evaluation."""

  every: int = 250  # RL steps between held-out evaluations.
  num_examples: int = 512  # Held-out examples per evaluation.
  batch_size: int = 256  # Examples per evaluation batch.

  def __post_init__(self):
    schema.positive(self, 'every', 'num_examples', 'batch_size')
    # Otherwise the remainder would be dropped from every evaluation.
    schema.divisible(self, 'num_examples', 'batch_size')


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every section of a text-RL config, parsed and checked."""

  run: RunConfig
  task_name: str
  task: Any  # The task's own config dataclass.
  data: DataConfig
  sft: SFTConfig
  rl: RLConfig
  offline: OfflineConfig | None
  reward: RewardConfig
  eval: EvalConfig
  mcts: search.MCTSConfig | None
  lora: lora_lib.LoraConfig
  multiturn: multiturn.MultiTurnConfig
  tools: tools_lib.ToolsConfig | None


_SECTIONS = {'data': DataConfig, 'sft': SFTConfig, 'rl': RLConfig,
             'reward': RewardConfig, 'eval': EvalConfig,
             'lora': lora_lib.LoraConfig,
             'multiturn': multiturn.MultiTurnConfig}
# Sections read elsewhere: model (model_and_tokenizer), algo (algos.make),
# task (its TaskSpec), offline, mcts, tools, mesh and distributed.
_OTHER_SECTIONS = ('model', 'algo', 'task', 'offline', 'mcts', 'tools',
                   'mesh', 'distributed')


def parse(config: ml_collections.ConfigDict) -> Settings:
  """Reads every section through its schema; errors name the field."""
  top, sections = schema.parse_sections(config, _SECTIONS, _OTHER_SECTIONS)
  task_name, task = tasks.parse(config.get('task'))
  rl = sections['rl']
  offline = (schema.parse(OfflineConfig, config.get('offline'),
                          'config.offline') if rl.source == 'offline' else None)
  mcts = (schema.parse(search.MCTSConfig, config.get('mcts'), 'config.mcts')
          if rl.sampler == 'mcts' else None)
  turns = sections['multiturn']
  tools = (schema.parse(tools_lib.ToolsConfig, config.get('tools'),
                        'config.tools')
           if turns.enabled and turns.responder == 'tools' else None)
  return Settings(run=schema.parse(RunConfig, top, 'config'),
                  task_name=task_name, task=task, offline=offline, mcts=mcts,
                  tools=tools, **sections)


def validate(settings: Settings, algo: algo_base.Algorithm, tokenizer,
             model_cfg: tfm.TransformerConfig, mesh: jax.sharding.Mesh) -> None:
  """The checks that span sections; each error names the fields."""
  run, rl = settings.run, settings.rl
  if run.loop == 'async' and jax.process_count() > 1:
    raise ValueError("config.loop='async' runs on one host; use "
                     "config.loop='sync' for a multi-host run.")
  algo_base.check_env(algo, TextEnv)
  _validate_multiturn(settings, algo)
  if settings.lora.enabled and run.loop == 'async':
    raise ValueError(
        "config.lora.rank > 0 runs with config.loop='sync': the async "
        "loop's actor does not hold the frozen base yet. Set "
        "config.loop='sync' or config.lora.rank=0.")
  # Every batch is split over data x fsdp, and read in equal shares by the
  # processes.
  shards = max(parallel.batch_size_divisor(mesh), jax.process_count())
  if rl.num_prompts % shards:
    raise ValueError(
        f'config.rl.batch_size / config.rl.group_size = {rl.num_prompts} '
        f'prompts per step must be divisible by the {shards} batch shards '
        f'(mesh data x fsdp = {parallel.batch_size_divisor(mesh)}, '
        f'{jax.process_count()} processes).')
  for name, value in (('sft.batch_size', settings.sft.batch_size),
                      ('eval.batch_size', settings.eval.batch_size)):
    if value % shards:
      raise ValueError(f'config.{name}={value} must be divisible by the '
                       f'{shards} batch shards (mesh data x fsdp, processes).')
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise ValueError(
        f'The tokenizer has {tokenizer.vocab_size} tokens but '
        f'config.model.vocab_size={model_cfg.vocab_size}; raise '
        'config.model.vocab_size.')
  data = settings.data
  for name, need in (
      ('rl.max_new_tokens', data.max_prompt_len + rl.max_new_tokens),
      ('data.max_target_len', data.max_prompt_len + data.max_target_len)):
    if need > model_cfg.max_seq_len:
      raise ValueError(
          f'config.data.max_prompt_len + config.{name} = {need} tokens do not '
          f'fit the KV cache of config.model.max_seq_len='
          f'{model_cfg.max_seq_len}; shorten them or raise model.max_seq_len.')
  if rl.sampler == 'policy' and algo.name == 'mcts_expert_iteration':
    raise ValueError("config.algo.name='mcts_expert_iteration' distils MCTS "
                     "rollouts: set config.rl.sampler='mcts'.")
  if rl.sampler == 'mcts' and run.loop != 'sync':
    raise ValueError("config.rl.sampler='mcts' needs config.loop='sync'.")
  validate_offline(settings, shards)
  checks.check(settings, algo, model_cfg, mesh)
  # Names, import paths and signatures; the task's fields are checked once
  # it is loaded (rewards.make).
  rewards.check_terms(reward_terms(settings), context_keys=(
      'tokenizer', 'fields', *settings.reward.context()))


def _validate_multiturn(settings: Settings, algo: algo_base.Algorithm
                        ) -> None:
  turns, rl = settings.multiturn, settings.rl
  if not turns.enabled:
    return
  if algo.needs_score:
    raise ValueError(
        f'config.algo.name={algo.name!r} decodes the prompts again for its '
        'baseline, which a multi-turn episode cannot (its environment reads '
        'the batch); use another algorithm, or config.multiturn.max_turns=0.')
  length = multiturn.Turns(turns.max_turns, turns.turn_tokens,
                           turns.observation_tokens).length
  if rl.max_new_tokens != length:
    raise ValueError(
        f'config.multiturn.max_turns={turns.max_turns} makes a stream of '
        f'{length} slots (max_turns x turn_tokens + (max_turns - 1) x '
        f'observation_tokens); set config.rl.max_new_tokens={length} '
        f'(it is {rl.max_new_tokens}).')
  for field, value, off in (('config.rl.sampler', rl.sampler, 'policy'),
                            ('config.rl.source', rl.source, 'online'),
                            ('config.rl.cache_segments', rl.cache_segments,
                             1)):
    if value != off:
      raise ValueError(f'{field}={value!r} does not work with multi-turn '
                       f'episodes (config.multiturn.max_turns > 0); set it '
                       f'to {off!r}.')
  if turns.responder != 'tools':
    RESPONDERS.get(turns.responder)  # A bad path fails now.
  if turns.place_turn_rewards and 'turn_rewards' in reward_terms(settings):
    raise ValueError(
        'config.multiturn.place_turn_rewards=True already adds the turn '
        'rewards to the return (at each turn\'s last token); remove the '
        "'turn_rewards' term from config.reward.terms, or set "
        'place_turn_rewards=False to keep the term.')


def make_multiturn(settings: Settings, env: TextEnv, tokenizer) -> TextEnv:
  """`env` as multi-turn episodes (`config.multiturn`), or as it is."""
  cfg = settings.multiturn
  if not cfg.enabled:
    return env
  stops = tuple(cfg.stop_strings)
  if cfg.responder == 'tools':
    toolset = tools_lib.make(settings.tools,
                             chat_template=getattr(tokenizer, 'chat_template',
                                                   None))
    stops += tuple(toolset.stop_strings)
  turns = multiturn.Turns(cfg.max_turns, cfg.turn_tokens,
                          cfg.observation_tokens,
                          multiturn.stop_sequences(stops, tokenizer))
  if cfg.responder == 'tools':
    responder = multiturn.HostResponder(
        multiturn.tool_replies(toolset, cfg.max_turns - 1), tokenizer,
        cfg.observation_tokens, tokenizer.pad_id)
  else:
    factory = RESPONDERS.get(cfg.responder)
    responder = factory(turns, tokenizer, tokenizer.pad_id)
  return multiturn.MultiTurnEnv.wrap(env, turns, responder,
                                    cfg.place_turn_rewards)


# `config.multiturn.responder`: import paths of factories
# `(turns, tokenizer, pad_id) -> Responder` ('tools' is built in).
RESPONDERS = registry.Registry('responder', 'config.multiturn.responder')


def validate_offline(settings: Settings, shards: int) -> None:
  """Checks `config.offline` against the other sections (rl.source='offline')."""
  off, rl = settings.offline, settings.rl
  if off is None:
    return
  if settings.run.loop != 'sync' or jax.process_count() > 1:
    raise ValueError("config.rl.source='offline' runs with config.loop='sync'"
                     ' on one process.')
  if rl.sampler != 'policy':
    raise ValueError("config.rl.source='offline' samples nothing: leave "
                     "config.rl.sampler='policy'.")
  g = off.samples_per_prompt
  if rl.batch_size % g:
    raise ValueError(f'config.rl.batch_size={rl.batch_size} (sequences '
                     'per step) must be divisible by '
                     f'config.offline.samples_per_prompt={g}.')
  prompts = rl.batch_size // g
  if prompts % shards:
    raise ValueError(f'config.rl.batch_size / config.offline.samples_per_prompt'
                     f' = {prompts} prompts per step must be divisible by the '
                     f'{shards} batch shards.')
  num_train = getattr(settings.task, 'num_train', off.num_prompts)
  if not prompts <= off.num_prompts <= num_train:
    raise ValueError(f'config.offline.num_prompts={off.num_prompts} must be '
                     f'between the {prompts} prompts of a step and '
                     f'config.task.num_train={num_train}.')


def offline_dataset(settings: Settings, workdir, task: 'Task', env: TextEnv,
                    reward_fn, params):
  """The run's offline dataset of scored sequences (`jaxrlgen.data.scored`).

  Sampled once from `params` (the warm-started policy) at
  `config.offline.temperature` and kept in WORKDIR/offline_dataset.npz, so a
  resumed run trains on the same data; deterministic in `config.seed`.
  """
  path = workdir / 'offline_dataset.npz'
  if path.exists():
    with np.load(path) as stored:
      return dict(stored)
  off, seed = settings.offline, settings.run.seed
  index = pipeline.batch_indices(len(task.train), off.num_prompts, 0, seed + 3)
  prompts = task.rl_fields(task.collate(pipeline.get_batch(task.train, index)))
  behaviour = dataclasses.replace(
      env, sampling=Sampling(temperature=off.temperature),
      num_samples=off.samples_per_prompt)
  dataset = scored.generate(
      params, prompts, jax.random.fold_in(jax.random.key(seed), 3),
      env=behaviour, reward_fn=reward_fn, chunk_prompts=off.chunk_prompts)
  if parallel.is_primary():  # Written whole, then renamed: never half a file.
    with open(str(path) + '.tmp', 'wb') as f:
      np.savez(f, **dataset)
    (workdir / 'offline_dataset.npz.tmp').rename(path)
  print(f'offline dataset: {scored.summary(dataset)}', flush=True)
  return dataset


def offline_batch(dataset, step: int, num_prompts: int, seed: int):
  """This host's share of step `step`'s offline batch (`num_prompts` prompts
  with all their samples), shuffled per epoch like the prompts."""
  index = pipeline.batch_indices(len(dataset['prompt']), num_prompts, step,
                                 seed + 4, jax.process_index(),
                                 jax.process_count())
  return {k: v[index] for k, v in dataset.items()}


@dataclasses.dataclass(frozen=True)
class Task:
  """A loaded task: its splits, batching and collation for one tokenizer.

  Attributes:
    train, test: random-access record sources.
    tokenizer: encodes prompts and completions.
    data: the padded lengths (`config.data`).
    fields: the record fields the reward reads (`TaskSpec.fields`).
    seed: the run's seed (data order).
  """

  train: Any
  test: Any
  tokenizer: Any
  data: DataConfig
  fields: tuple[str, ...]
  seed: int
  text_lengths: Any = dataclasses.field(default_factory=dict)
  has_completion: bool = True
  stats: Any = dataclasses.field(default_factory=dict)

  def batch(self, step: int, batch_size: int, stream: int = 0):
    """The host's share of the training batch of `step` (numpy arrays)."""
    idx = pipeline.batch_indices(
        len(self.train), batch_size, step, self.seed + stream,
        jax.process_index(), jax.process_count())
    return self.collate(pipeline.get_batch(self.train, idx))

  def collate(self, records):
    return tasks.collate(records, self.tokenizer, self.data.max_prompt_len,
                         self.data.max_target_len, self.fields,
                         self.text_lengths)

  def rl_fields(self, batch):
    """The arrays an RL step reads: the prompt and the reward's fields."""
    return {k: batch[k] for k in ('prompt', 'prompt_mask', *self.fields)}

  def eval_batches(self, num_examples: int, batch_size: int):
    num_examples = min(num_examples, len(self.test))
    num_examples -= num_examples % batch_size
    if not num_examples:
      raise ValueError(f'config.eval.batch_size={batch_size} exceeds the '
                       f'{len(self.test)} held-out examples.')
    share = parallel.process_shard(batch_size)  # This host's rows.
    return [self.collate(pipeline.get_batch(
        self.test, range(i + share.start, i + share.stop)))
            for i in range(0, num_examples, batch_size)]


def load_task(task_name: str, task_cfg, data: DataConfig, seed: int, workdir,
              tokenizer) -> Task:
  """Opens the task's splits, building them under the data dir first if
  needed (process 0 builds; the others wait and read).

  Args:
    task_name: `config.task.name`.
    task_cfg: the task's config dataclass (`tasks.parse`).
    data: `config.data`.
    seed: the run's seed (data order).
    workdir: the run's directory (data goes to WORKDIR/data by default).
    tokenizer: encodes the records.
  """
  spec = tasks.get(task_name)
  data_dir = data.data_dir or str(workdir / 'data')
  load = functools.partial(tasks.open_splits, spec, task_cfg, data_dir,
                           tokenizer, data.max_prompt_len,
                           data.max_target_len)
  if parallel.is_primary():
    splits = load()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('jaxrlgen: dataset prepared')
  if not parallel.is_primary():
    splits = load()
  if splits.report and parallel.is_primary():
    print(splits.report, flush=True)
  return Task(splits.train, splits.test, tokenizer, data, splits.fields,
              seed=seed, text_lengths=dict(splits.text_lengths),
              has_completion=splits.has_completion, stats=dict(splits.stats))


def reward_terms(settings: Settings) -> dict[str, float]:
  """`config.reward.terms`, `{config.reward.fn: 1}`, or the task's default
  reward when both are empty."""
  if settings.reward.fn:
    if settings.reward.terms and parallel.is_primary():
      print(f'config.reward.fn={settings.reward.fn!r} is the whole reward; '
            f'config.reward.terms={dict(settings.reward.terms)} is not used.',
            flush=True)
    return {settings.reward.fn: 1.0}
  return dict(settings.reward.terms or tasks.get(settings.task_name).reward)


def make_evaluator(env, reward_fn, batches, policy_params,
                   layout: parallel.Layout, *, fields=None, prefix: str = '',
                   samples: 'SampleWriter | None' = None):
  """state -> {'eval/accuracy', 'eval/mean_length'} over greedy completions.

  `env` is the text environment or a sampling strategy of it (a search):
  anything with `greedy()` and `rollout(params, batch, key)`. `batches` are
  this process's shares of the evaluation batches (`fields` of each are
  kept: default, all); per-example results are gathered on every process,
  so every process gets the global figures. `prefix` (of the metric names,
  e.g. 'mcts_') tells decoders apart. `samples` writes every completion with
  its reward at each evaluation.
  """
  greedy = env.greedy()

  def decode(params, batch, frozen):
    reward, failed, rollout = step_lib.greedy_eval_step(
        params, batch, frozen, env=greedy, reward_fn=reward_fn)
    # Only what the figures and samples read reaches the host (a search's
    # rollout also carries its [B, T, V] weights).
    # A multi-turn episode's slots and statistics too.
    context = {k: rollout.context[k] for k in ('tokens', 'mask', 'attend',
                                               'stats')
               if k in rollout.context}
    return reward, failed, rollout.replace(context=context)

  eval_step = jax.jit(decode, out_shardings=parallel.replicated(layout.mesh))
  batches = [layout.batch(fields(b) if fields else b) for b in batches]

  def evaluate(state) -> dict[str, float]:
    params = policy_params(state.params)
    outs = [jax.device_get(eval_step(params, batch, state.frozen))
            for batch in batches]
    reward = np.concatenate([r for r, _, _ in outs]).astype(np.float64)
    mask = np.concatenate([np.asarray(o.mask) for _, _, o in outs])
    if samples is not None:
      samples.write(int(state.step), prefix, outs)
    stats = {f'eval/{prefix}env/{name}': float(np.mean(np.concatenate(
        [np.asarray(o.context['stats'][name]) for _, _, o in outs])))
             for name in outs[0][2].context.get('stats', {})}
    return {f'eval/{prefix}accuracy': float(np.mean(reward)),
            f'eval/{prefix}mean_length': float(np.mean(np.sum(mask, 1))),
            **stats}

  return evaluate


class SampleWriter:
  """Writes `DIR/STEP.jsonl` (`DIR/mcts_STEP.jsonl` for a search's): one line
  per held-out prompt with its greedy completion, reward and whether the
  reward failed, so that a person can read what the policy writes."""

  def __init__(self, directory, tokenizer):
    self.directory = directory
    self.tokenizer = tokenizer

  def write(self, step: int, prefix: str, outs) -> None:
    """`outs`: per evaluation batch, (rewards, failed, greedy rollout)."""
    if not parallel.is_primary():
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    # A chat prompt holds end-of-turn tokens, which may be EOS: read past them.
    decode = lambda ids, keep, whole: self.tokenizer.decode(
        np.asarray(ids)[np.asarray(keep, bool)], stop_at_eos=not whole)
    lines = []
    for reward, failed, rollout in outs:
      prompt, prompt_mask = rollout.context['tokens'], rollout.context['mask']
      # A multi-turn episode reads as its whole stream: turns and
      # observations, the padding between them left out.
      shown = rollout.context.get('attend', rollout.mask)
      for i in range(len(reward)):
        lines.append(json.dumps({
            'prompt': decode(prompt[i], prompt_mask[i], True),
            'completion': decode(rollout.actions[i], shown[i],
                                 'attend' in rollout.context),
            'reward': float(reward[i]), 'failed': bool(failed[i])},
                                ensure_ascii=False))
    path = self.directory / f'{prefix}{step}.jsonl'
    tmp = path.with_name(path.name + '.tmp')  # Never read half-written.
    tmp.write_text('\n'.join(lines) + '\n')
    tmp.replace(path)


def _hf_overrides(model: ml_collections.ConfigDict) -> dict:
  # The fields of the `model` section that apply to a released model.
  return {k: v for k, v in model.items() if k not in ('path', 'random')}


def model_and_tokenizer(model: ml_collections.ConfigDict):
  """(tokenizer, TransformerConfig) of `config.model`.

  With `model.path`, a Hugging Face checkpoint directory or a `.gguf` file:
  its config and tokenizer, with the section's other fields (max_seq_len,
  param_dtype, dtype, remat, ...) overriding; otherwise the byte tokenizer
  and a fresh model of the section's TransformerConfig fields. A section
  may keep the architecture of its fresh model apart, in `model.random`
  (ignored when there is a path), so that giving a path is all it takes to
  switch to a released model.
  """
  fields = _hf_overrides(model)
  if model.get('path'):
    return (HFTokenizer.from_path(model.path),
            hf.model_config(hf.read_config(model.path), **fields))
  return ByteTokenizer(), schema.parse(
      tfm.TransformerConfig, {**model.get('random', {}), **fields},
      'config.model')


def default_layout(model_cfg: tfm.TransformerConfig) -> parallel.Layout:
  """Every device on `data`, with the logical names of `model_cfg`'s params."""
  return parallel.Layout(parallel.make_mesh(), model_logical_axes(model_cfg))


def model_logical_axes(model_cfg: tfm.TransformerConfig):
  # With the value head's names too: PPO's critic is the model with one.
  return tfm.logical_axes(dataclasses.replace(model_cfg, value_head=True))


def warm_start(sft: SFTConfig, seed: int, workdir, task: Task, env: TextEnv,
               params, layout: parallel.Layout | None = None,
               run: RunConfig | None = None):
  """Supervised warm start as its own run under `workdir/sft`; its params.
  `run` (config's top level) gives its non-finite policy."""
  run = run or RunConfig()
  layout = layout or default_layout(env.policy.config)
  tx = optim.make(sft.optimizer, sft.steps)
  state = layout.init(
      lambda p: TrainState.create(p, tx), params)
  step_fn = layout.jit_step(
      functools.partial(step_lib.sft_step, env=env, tx=tx), state)
  state, _ = loop.run_stage(
      workdir / 'sft', state, step_fn=step_fn,
      batch_fn=lambda s: layout.batch(task.batch(s, sft.batch_size,
                                                 stream=1)),
      key=jax.random.key(seed + 1),
      config=loop.LoopConfig(total_steps=sft.steps, log_every=sft.log_every,
                             checkpoint_every=sft.steps,
                             progress_desc='sft', progress_show=('nll',),
                             nonfinite=run.nonfinite,
                             max_nonfinite_steps=run.max_nonfinite_steps),
      plot=(('nll', 'entropy'), 'sft.png', 'Supervised warm start'))
  return state.params


BASE_FILE = 'frozen_base.json'


def record_base(workdir, config: ml_collections.ConfigDict,
                settings: Settings) -> None:
  """Writes which weights the checkpoints' adapters sit on (checkpoints hold
  only the adapters), or checks a resumed run's against it: adapters
  resumed onto another base would train silently on the wrong model."""
  base = {'model_path': config.model.get('path') or '',
          'random_init_seed': (None if config.model.get('path')
                               else settings.run.seed),
          'sft_steps': settings.sft.steps,
          'lora': dataclasses.asdict(settings.lora)}
  path = workdir / BASE_FILE
  if path.exists():
    recorded = json.loads(path.read_text())
    if recorded != base:
      raise ValueError(
          f'{path} says this run\'s adapters were trained on {recorded}, but '
          f'the config gives {base}: resume with the same config.model.path, '
          'config.seed, config.sft.steps and config.lora, or use a new '
          'workdir.')
  elif parallel.is_primary():
    path.write_text(json.dumps(base, indent=1))


def with_adapters(lora: lora_lib.LoraConfig, env: TextEnv, sampler, params,
                  layout: parallel.Layout, key: jax.Array):
  """The run's pieces with low-rank adapters on `params` as a frozen base.

  Returns (env and sampler whose policy has adapters; the frozen base,
  quantized per `lora.quantize`; fresh adapters, the model equal to its
  base, and the heads that train with them (a value head); the layout with
  the adapters' and quantized kernels' logical names).
  """
  policy = env.policy.with_adapters(lora)
  env = dataclasses.replace(env, policy=policy)
  if sampler is not None:
    sampler = dataclasses.replace(sampler, env=env)
  specs = flax.traverse_util.flatten_dict(layout.logical_specs)
  specs.update(flax.traverse_util.flatten_dict(policy.adapter_logical_axes()))
  layout = parallel.Layout(layout.mesh,
                           flax.traverse_util.unflatten_dict(specs))
  frozen, heads = policy.split_base(params)
  frozen = layout.init(policy.quantize_base, frozen)
  adapters = {**policy.init_adapters(frozen, key), **heads}
  return env, sampler, frozen, adapters, layout


def make_env(rl: RLConfig, model: tfm.Transformer, tokenizer) -> TextEnv:
  """The sampling environment of `config.rl`."""
  sampling = Sampling(temperature=rl.temperature, top_k=rl.top_k,
                      top_p=rl.top_p, method=rl.sampling_method)
  return TextEnv(LMPolicy(model), max_new_tokens=rl.max_new_tokens,
                 sampling=sampling, eos_id=tokenizer.eos_id,
                 pad_id=tokenizer.pad_id, num_samples=rl.group_size,
                 logprob_chunk=rl.logprob_chunk,
                 cache_segments=rl.cache_segments, pack_rows=rl.pack_rows)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the whole experiment; returns the summary."""
  start_time = time.time()
  if config.model.get('path'):  # e.g. a file inside an installed package.
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.model.path = hf.resolve(config.model.path)
  settings = parse(config)
  algo = algos.make(config.algo)
  tokenizer, model_cfg = model_and_tokenizer(config.model)
  mesh = parallel.make_mesh(config.mesh)
  validate(settings, algo, tokenizer, model_cfg, mesh)
  workdir = workdir_lib.prepare_workdir(workdir)
  # The async loop places its actor and learner on device groups of its own;
  # the sync loop's activations follow the mesh.
  context = (parallel.activate(mesh) if settings.run.loop == 'sync'
             else contextlib.nullcontext())
  with context:
    return _run(config, settings, algo, workdir, tokenizer, model_cfg,
                parallel.Layout(mesh, model_logical_axes(model_cfg)),
                start_time)


def _run(config, settings: Settings, algo, workdir, tokenizer, model_cfg,
         layout: parallel.Layout, start_time: float) -> dict:
  run_cfg, rl = settings.run, settings.rl
  # The task first: a files task finds its reward fields in its data.
  task_cfg = settings.task
  if not settings.sft.steps and getattr(task_cfg, 'completion_field', ''):
    # No warm start reads the reference completions: a long one must not
    # cost its record.
    task_cfg = dataclasses.replace(task_cfg, completion_field='')
  task = load_task(settings.task_name, task_cfg, settings.data,
                   run_cfg.seed, workdir, tokenizer)
  if settings.sft.steps and not task.has_completion:
    raise ValueError(
        f'config.sft.steps={settings.sft.steps} needs reference completions, '
        "and the task's records have none (config.task.completion_field); "
        'set config.sft.steps=0.')
  reward_fn = rewards.make(reward_terms(settings), tokenizer=tokenizer,
                           fields=task.fields, **settings.reward.context())
  model = tfm.Transformer(model_cfg)
  text_env = make_env(rl, model, tokenizer)
  env = make_multiturn(settings, text_env, tokenizer)
  if isinstance(env, multiturn.MultiTurnEnv):  # The task scores the answer.
    reward_fn = multiturn.on_answer(reward_fn, env.turns)
  _check_reward_shape(reward_fn, env, rl.num_prompts, settings.data, task)
  sampler = (search.MCTSSampler(env, reward_fn, settings.mcts)
             if settings.mcts is not None else None)

  init_key = jax.random.key(run_cfg.seed)
  if config.model.get('path'):  # A released model, placed in its shards.
    _, params = hf.load(config.model.path, shardings=layout.shardings,
                        **_hf_overrides(config.model))
  else:
    params = layout.init(functools.partial(tfm.init_params, model_cfg),
                         init_key)
  if settings.sft.steps:
    # Teacher forcing on the task's completions: single-turn.
    sft_env = dataclasses.replace(text_env, sampling=Sampling(),
                                  num_samples=1)
    params = warm_start(settings.sft, run_cfg.seed, workdir, task, sft_env,
                        params, layout, run_cfg)

  frozen = None
  if settings.lora.enabled:  # The loaded weights become the frozen base.
    record_base(workdir, config, settings)
    env, sampler, frozen, params, layout = with_adapters(
        settings.lora, env, sampler, params, layout,
        jax.random.fold_in(init_key, 3))
  tx = optim.make(rl.optimizer, run_cfg.total_steps)
  ref_dtype = jnp.dtype(rl.reference_dtype)

  def build_state(params, frozen):
    if not algo.uses_reference:
      ref_params = None
    elif frozen is not None:  # The base with the adapters off: no copy.
      ref_params = lora_lib.adapters_off(params)
    else:
      ref_params = jax.tree.map(lambda x: x.astype(ref_dtype), params)
    params = algo.init_params(step_lib.bind(env, frozen), params,
                              jax.random.fold_in(init_key, 1))
    return TrainState.create(
        params, tx, ref_params=ref_params, frozen=frozen,
        algo_state=algo_base.init_algo_state(
            algo, params, rollout=_rollout_spec(
                rl.batch_size, settings.data.max_prompt_len, env)))

  offline = None  # config.rl.source='offline': the dataset, sampled once.
  if settings.offline is not None:
    offline = offline_dataset(settings, workdir, task,
                              step_lib.bind(env, frozen), reward_fn, params)
  state = layout.init(build_state, params, frozen)
  del params, frozen
  if parallel.is_primary():
    print(memory_report(state, env, rl.num_prompts,
                        settings.data.max_prompt_len, layout), flush=True)
  checkpointer = checkpoint_lib.Checkpointer(
      str(workdir / 'checkpoints'), max_to_keep=run_cfg.max_checkpoints)
  # Restored arrays take the shardings of `state`'s: a checkpoint written on
  # one mesh restores onto another.
  state, resume_step = checkpointer.restore_or(state)
  fit, batch_fn = _fit_and_batches(
      settings, config.algo.get('max_staleness', 1), state, env, reward_fn,
      algo, tx, sampler, offline, task, layout)
  evaluate = _evaluator(settings.eval, algo.decoding_env(env), reward_fn,
                        algo, sampler, task, layout, workdir)
  with writers.MetricWriter(str(workdir), resume_step=resume_step) as writer:
    state = fit(
        state,
        batch_fn=batch_fn,
        key=jax.random.fold_in(jax.random.key(run_cfg.seed), 2),
        config=loop.LoopConfig(total_steps=run_cfg.total_steps,
                               log_every=run_cfg.log_every,
                               eval_every=settings.eval.every,
                               checkpoint_every=run_cfg.checkpoint_every,
                               progress_desc=algo.name,
                               nonfinite=run_cfg.nonfinite,
                               max_nonfinite_steps=(
                                   run_cfg.max_nonfinite_steps)),
        checkpointer=checkpointer, writer=writer, eval_fn=evaluate)
  checkpointer.close()
  if config.model.get('path'):  # The trained policy, for other tools to serve.
    policy_params = algo.policy_params(state.params)
    if settings.lora.enabled:
      export_lib.write_adapters(workdir / 'adapters', config.model.path,
                                model_cfg, policy_params, settings.lora)
      policy_params = lora_lib.merge(state.frozen, policy_params,
                                     settings.lora)
    export_lib.write(workdir / 'hf_model', config.model.path, model_cfg,
                     policy_params)
  summary = writers.summarize(writers.read_metrics(str(workdir)),
                              time.time() - start_time, ('accuracy',))
  summary['mesh'] = dict(layout.mesh.shape)
  summary.update({f'data/{k}': v for k, v in task.stats.items()})
  summary['num_processes'] = jax.process_count()
  if offline is not None:
    summary.update(scored.summary(offline))
  if parallel.is_primary():
    plots.plot_metrics(writers.read_metrics(str(workdir)), PLOT_KEYS,
                       str(workdir / 'training.png'),
                       title=f'{algo.name} on {settings.task_name}')
    writers.write_summary(str(workdir), summary)
  return summary


def _fit_and_batches(settings: Settings, max_staleness: int, state, env,
                     reward_fn, algo, tx, sampler, offline, task: Task,
                     layout: parallel.Layout):
  """The training loop (sync or async) with its step, and `batch_fn`.

  The step is one of a family: the actor samples the policy, searches with
  it (MCTS) or replays the offline dataset; the learner is the same.
  """
  rl, seed = settings.rl, settings.run.seed
  step_kwargs = dict(env=env, reward_fn=reward_fn, algo=algo, tx=tx)
  batch_fn = lambda s: layout.batch(task.rl_fields(task.batch(s,
                                                              rl.num_prompts)))
  if offline is not None:  # The learner step alone, on the stored samples.
    g = settings.offline.samples_per_prompt
    step = functools.partial(step_lib.rl_step, actor=step_lib.replay, **{
        **step_kwargs, 'env': dataclasses.replace(env, num_samples=g)})
    batch_fn = lambda s: layout.batch(offline_batch(
        offline, s, rl.batch_size // g, seed))
  elif sampler is not None:  # Searches decode; the learner step is the same.
    step = functools.partial(step_lib.rl_step, actor=functools.partial(
        step_lib.sample, env=sampler, reward_fn=reward_fn), **step_kwargs)
  else:
    step = functools.partial(step_lib.rl_step, **step_kwargs)
  if settings.run.loop == 'async':  # The actor lags the learner (IMPALA).
    fit = functools.partial(
        async_loop.fit, max_staleness=max_staleness,
        steps=async_loop.rl_actor_learner(env, reward_fn, algo, tx))
    return fit, lambda s: task.rl_fields(task.batch(s, rl.num_prompts))
  return functools.partial(loop.fit, step_fn=layout.jit_step(step, state)), \
      batch_fn


def _evaluator(eval_cfg: EvalConfig, env: TextEnv, reward_fn, algo, sampler,
               task: Task, layout: parallel.Layout, workdir):
  """Held-out evaluation of greedy decoding with `env` (the algorithm's
  decoding policy) and, with a search sampler, of noise-free MCTS too; the
  completions go to `workdir/samples/`."""
  eval_batches = task.eval_batches(eval_cfg.num_examples, eval_cfg.batch_size)
  samples = SampleWriter(workdir / 'samples', task.tokenizer)
  evaluate = make_evaluator(env, reward_fn, eval_batches, algo.policy_params,
                            layout, fields=task.rl_fields, samples=samples)
  if sampler is None:
    return evaluate
  mcts_eval = make_evaluator(sampler, reward_fn, eval_batches,
                             algo.policy_params, layout,
                             fields=task.rl_fields, prefix='mcts_',
                             samples=samples)
  return lambda state: {**evaluate(state), **mcts_eval(state)}


def memory_report(state: TrainState, env: TextEnv, num_prompts: int,
                  max_prompt_len: int, layout: parallel.Layout) -> str:
  """Bytes per device of parameters, optimizer state, reference model and
  the rollout's KV cache, on the run's mesh."""
  cache = jax.eval_shape(functools.partial(
      env.policy.init_cache, num_prompts * env.num_samples,
      max_prompt_len + env.max_new_tokens))
  sizes = dict(layout.mesh.shape)
  kv_names = ('batch', 'act_kv_heads', 'length', None)

  def place(x):
    names = kv_names if x.ndim == 4 else ('batch', None)[:x.ndim]
    spec = parallel.spec_for(names, x.shape, sizes)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=(
        jax.sharding.NamedSharding(layout.mesh, spec)))

  if state.frozen is None:
    params = {'parameters': state.params}
  else:
    params = {'parameters (frozen base)': state.frozen,
              'parameters (adapters and heads)': state.params}
  return parallel.memory_report({
      **params,
      'optimizer state': state.opt_state,
      'reference model': state.ref_params,
      'KV cache (rollout)': jax.tree.map(place, cache),
  }) + f'\n  on mesh {sizes} of {jax.process_count()} process(es)'


def _rollout_spec(batch_size: int, prompt_len: int, env: TextEnv) -> Rollout:
  """The shapes of `env`'s rollouts, as jax.ShapeDtypeStructs."""
  spec = jax.ShapeDtypeStruct
  num_steps = env.max_new_tokens
  context = {'tokens': spec((batch_size, prompt_len), jnp.int32),
             'mask': spec((batch_size, prompt_len), jnp.bool_)}
  if isinstance(env, multiturn.MultiTurnEnv):
    context.update(multiturn.context_spec(batch_size, env.turns,
                                          env.place_turn_rewards))
  return Rollout(context=context,
                 actions=spec((batch_size, num_steps), jnp.int32),
                 logp=spec((batch_size, num_steps), jnp.float32),
                 mask=spec((batch_size, num_steps), jnp.bool_))


def _check_reward_shape(reward_fn, env: TextEnv, num_prompts: int,
                        data: DataConfig, task: 'Task'):
  """Fails before any compute when the reward is not f32[B]; the batch's
  shapes and dtypes are those of a collated record."""
  b = num_prompts * env.num_samples
  one = task.rl_fields(task.collate([task.train[0]]))
  batch = {k: jax.ShapeDtypeStruct((b, *v.shape[1:]), v.dtype)
           for k, v in one.items()}
  step_lib.check_reward(
      reward_fn, _rollout_spec(b, data.max_prompt_len, env),
      batch)
