"""Reward-model over-optimisation in small (Gao et al. 2022, "Scaling laws
for reward model overoptimization").

A fixed, hidden "gold" reward plays the human; a proxy reward model learns it
from preference labels, and policies optimised against the proxy are scored
by the gold reward as they move away from the supervised policy:

  1. Supervised warm start on the task (`text_rl.warm_start`, under `sft/`).
  2. Pairs (`pairs/pairs.npz`): two samples of the warm-started policy per
     prompt, labelled by a Bradley-Terry draw on their gold rewards; training
     pairs from training prompts, held-out pairs from held-out prompts.
  3. Proxy reward model (`rm/`): the policy's trunk with a scalar head,
     Bradley-Terry loss on the training pairs; held-out accuracy on the
     held-out pairs. Its scores are standardised over the warm-start samples.
  4. Policies (`ppo_kl_coef<c>/`, `grpo_beta<c>/`, `dpo_beta<c>/`): PPO and
     GRPO maximise the proxy at each KL coefficient c; DPO trains on the same
     training pairs at each beta. Every `eval.every` steps, samples of the
     policy on held-out prompts give `eval/gold_reward`, `eval/proxy_reward`
     and `eval/kl`, the sequence-level KL(pi || pi_sft) (sum over tokens of
     log pi - log pi_sft of the sampled tokens, whose mean is the KL).

Outputs under the workdir: each stage's metrics.jsonl, TensorBoard events and
orbax checkpoints (a restarted run skips or resumes each stage),
`gold_vs_kl.png` (gold and proxy reward against sqrt(KL), every run) and
`summary.json` (`rm/heldout_accuracy`, `gold_reward/sft`, and per method M
`gold_reward/M`, `proxy_reward/M`, `kl/M` at the end of M's first-listed
coefficient, plus every run's end and peak figures under `run/<name>/...`).
A method whose coefficient list is empty is left out.

Every section of the config is read through its schema (`Settings`, from
`parse`) before anything is computed: the generic recipe's `data`, `sft` and
`rl` sections (`jaxrlgen.recipes.text_rl`), the task's own (`config.task`),
and the study's sections below, whose defaults are the study's values.
"""

import dataclasses
import functools
import json
import math
import time
from typing import Any, ClassVar

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxrlgen import algos
from jaxrlgen import parallel
from jaxrlgen import schema
from jaxrlgen import tasks
from jaxrlgen.algos import base as algo_base
from jaxrlgen.algos import preference
from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.data import pipeline
from jaxrlgen.data import preferences as pref_data
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import reward_model as rm
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy
from jaxrlgen.policies import lora as lora_lib
from jaxrlgen.recipes import text_rl
from jaxrlgen.rewards import learned
from jaxrlgen.rewards import text as text_rewards
from jaxrlgen.train import loop
from jaxrlgen.train import optim
from jaxrlgen.train import plots
from jaxrlgen.train import step as step_lib
from jaxrlgen.train import workdir as workdir_lib
from jaxrlgen.train import writers

METHODS = ('ppo', 'grpo', 'dpo')
# The config field that holds each method's KL coefficients, and the
# algorithm field each coefficient goes to.
COEF_FIELDS = {'ppo': ('kl_coefs', 'kl_coef'), 'grpo': ('betas', 'beta'),
               'dpo': ('betas', 'beta')}
EVAL_KEYS = ('eval/gold_reward', 'eval/proxy_reward', 'eval/kl')
# The task field the gold reward compares the completion with.
ANSWER_FIELD = 'answer'
# Fields of the generic recipe's `config.rl` that the study does not read
# (its reference model is the float32 warm start; it samples online with the
# policy): they must keep their defaults.
UNUSED_RL_FIELDS = ('reference_dtype', 'source', 'sampler')


# --- Config schemas ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The top-level fields of the config."""

  SPECIAL: ClassVar[schema.Special] = {
      'seed': schema.Means(zero='a seed like any other'),
      'unregularised_steps': schema.Means(zero='total_steps')}

  recipe: str = 'experiments.rlhf_gold.recipe:run'  # The recipe that runs it.
  seed: int = 0  # Seeds init, data order, pair labels and sampling.
  # RL steps of each PPO / GRPO run. At 500, unregularised PPO had not yet
  # over-optimised the 1,800-step proxy on some seeds (seed 0: gold still at
  # its peak at step 450, KL 4.6).
  total_steps: int = 800
  # RL steps of the runs without a KL term (coefficient 0). Their KL keeps
  # growing after the regularised runs have settled: gold had peaked and
  # fallen on 2 of seeds 0-4 at 800 steps, on 3 at 1,000 and 1,200, on 4 at
  # 1,400 and 1,600 (README, "Over-optimisation"); 1,600 took a seed past
  # 10 minutes.
  unregularised_steps: int = 1400
  log_every: int = 10  # Steps between metric fetches and log lines.
  checkpoint_every: int = 100  # Steps between checkpoints of each run.
  max_checkpoints: int = 1  # Checkpoints kept per run.

  def __post_init__(self):
    schema.non_negative(self, 'seed')
    schema.positive(self, 'total_steps', 'log_every', 'checkpoint_every',
                    'max_checkpoints')
    schema.non_negative(self, 'unregularised_steps')

  def rl_steps(self, coef: float) -> int:
    """Steps of the PPO / GRPO run at KL coefficient `coef`."""
    return (self.unregularised_steps or self.total_steps) if coef == 0 else (
        self.total_steps)


@dataclasses.dataclass(frozen=True)
class GoldConfig:
  """`config.gold`: the hidden reward that plays the human."""

  # Gold reward exp(-|answer error| / scale); 0 if malformed.
  scale: float = 10.0

  def __post_init__(self):
    schema.positive(self, 'scale')


@dataclasses.dataclass(frozen=True)
class PairsConfig:
  """`config.pairs`: the gold-labelled preference pairs."""

  num_train: int = 16384  # Labelled pairs from training prompts.
  num_heldout: int = 512  # Labelled pairs from held-out prompts (RM accuracy).
  batch_size: int = 256  # Prompts sampled at once.
  label: str = 'bradley_terry'  # bradley_terry (noisy draw) | max (gold order).
  temperature: float = 0.1  # Bradley-Terry noise on gold differences.

  def __post_init__(self):
    schema.positive(self, 'num_train', 'num_heldout', 'batch_size',
                    'temperature')
    schema.one_of(self, 'label', pref_data.LABELS)
    schema.divisible(self, 'num_train', 'batch_size')
    schema.divisible(self, 'num_heldout', 'batch_size')


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
  """`config.rm`: the proxy reward model."""

  SPECIAL: ClassVar[schema.Special] = {
      'std_coef': schema.Means(zero="the ensemble's mean alone"),
      'trunk_steps': schema.Means(zero="the policy's warm start as it is")}

  # Bradley-Terry steps of the proxy reward model. At 600 steps (5e-4) the
  # proxy underfitted: its held-out accuracy was still rising when the
  # cosine schedule ended, at 0.67-0.82 against the gold order on seeds
  # 0-4 (experiments/rlhf_gold/README.md, "Why the proxy failed").
  steps: int = 1800
  batch_size: int = 128  # Pairs per step.
  # Supervised steps on the task's demonstrations that continue the policy's
  # warm start for the proxy's trunk alone (under rm_trunk/sft/): a trunk
  # that can add tells near answers from far ones. The policy keeps its weak
  # warm start.
  trunk_steps: int = 1000
  ensemble_size: int = 1  # Members (bootstrapped); > 1 enables std_coef.
  # Conservative reward mean - std_coef * std (ensembles).
  std_coef: float = 0.0
  log_every: int = 50  # Steps between log lines.
  eval_every: int = 200  # Steps between held-out accuracy evaluations.
  # At 1e-3 the proxy learnt faster on some seeds and stalled at 0.75 on
  # others.
  optimizer: optim.OptimizerConfig = optim.OptimizerConfig(
      5e-4, 'cosine', warmup_steps=10)
  # Adapters on the warm start's frozen trunk (rank 0: train every
  # parameter); the members of an ensemble share the trunk. The trained
  # adapters are merged into it before the proxy scores anything.
  lora: lora_lib.LoraConfig = lora_lib.LoraConfig()

  def __post_init__(self):
    schema.positive(self, 'steps', 'batch_size', 'ensemble_size', 'log_every',
                    'eval_every')
    schema.non_negative(self, 'trunk_steps')
    if self.std_coef and self.ensemble_size < 2:
      raise schema.FieldError(
          'std_coef', f'={self.std_coef} needs an ensemble: set '
          f'ensemble_size >= 2 (it is {self.ensemble_size}).')


def _check_coefs(section, field: str, strict: bool) -> None:
  """KL coefficients: >= 0 (> 0 when `strict`), each once."""
  coefs = list(getattr(section, field))
  if any(c < 0 or (strict and c == 0) for c in coefs):
    raise schema.FieldError(
        field, f'={coefs} must be {"> 0" if strict else ">= 0"}.')
  if len(set(coefs)) != len(coefs):
    raise schema.FieldError(field, f'={coefs} repeats a value.')


def _algo_config(name: str, **changes) -> ml_collections.ConfigDict:
  config = algos.default_config(name)
  config.update(changes)
  return config


class _PolicySweep:
  """PPO or GRPO against the proxy: one run per KL coefficient.

  A subclass names its method and has the fields `algo` (the algorithm's
  hyperparameters, `config.algo`-like) and its coefficients' field.
  """

  METHOD: ClassVar[str]

  def __post_init__(self):
    coefs_field, _ = COEF_FIELDS[self.METHOD]
    _check_coefs(self, coefs_field, strict=False)
    name = self.algo.get('name')
    if name != self.METHOD:
      raise schema.FieldError('algo.name',
                              f'={name!r} must be {self.METHOD!r}.')
    try:  # Unknown or bad fields fail here.
      algos.make(ml_collections.ConfigDict(self.algo))
    except ValueError as e:
      raise ValueError(str(e).replace(
          'config.algo.', f'config.{self.METHOD}.algo.')) from None

  def algorithm(self, coef: float) -> algos.Algorithm:
    """The algorithm of the run at KL coefficient `coef`."""
    config = ml_collections.ConfigDict(self.algo)
    config[COEF_FIELDS[self.METHOD][1]] = coef
    return algos.make(config)


@dataclasses.dataclass(frozen=True)
class PPOSweepConfig(_PolicySweep):
  """`config.ppo`: one PPO run against the proxy per KL coefficient."""

  METHOD: ClassVar[str] = 'ppo'
  # KL-in-reward coefficients, one run each; the first is the run that
  # summary.json reports as gold_reward/ppo etc. (0: unregularised, the most
  # optimisation pressure on the proxy); empty: no PPO runs. (0.02 ended
  # below 0.05 on seeds 0-4, 0.507 +- 0.094 against 0.571 +- 0.042, and was
  # dropped to keep a seed under 10 minutes: a PPO run costs 1.6 GRPO runs.)
  kl_coefs: tuple[float, ...] = (0.0, 0.05)
  # The rest of PPO's hyperparameters (kl_coef is set per run).
  algo: ml_collections.ConfigDict = dataclasses.field(
      default_factory=lambda: _algo_config('ppo', num_epochs=2,
                                           num_minibatches=2))


@dataclasses.dataclass(frozen=True)
class GRPOSweepConfig(_PolicySweep):
  """`config.grpo`: one GRPO run against the proxy per KL coefficient."""

  METHOD: ClassVar[str] = 'grpo'
  # k3 KL-loss coefficients, one run each; the first is summary.json's.
  betas: tuple[float, ...] = (0.0, 0.05, 0.2)
  # The rest of GRPO's hyperparameters (beta is set per run).
  algo: ml_collections.ConfigDict = dataclasses.field(
      default_factory=lambda: _algo_config('grpo'))


@dataclasses.dataclass(frozen=True)
class DPOSweepConfig:
  """`config.dpo`: one offline DPO run on the training pairs per beta."""

  SPECIAL: ClassVar[schema.Special] = {
      'label_smoothing': schema.Means(zero='plain DPO')}

  # DPO betas, one run each; the first is summary.json's. (0.03 ended lower
  # than 0.1 on seeds 0-4, 0.231 +- 0.027 against 0.278 +- 0.035, and was
  # dropped to keep a seed under 10 minutes; experiments/rlhf_gold/README.md.)
  betas: tuple[float, ...] = (0.1,)
  loss: str = 'dpo'  # dpo | ipo | simpo.
  label_smoothing: float = 0.0  # > 0: conservative DPO.
  steps: int = 400  # Optimizer steps over the training pairs (1.6 epochs).
  batch_size: int = 64  # Pairs per step.
  optimizer: optim.OptimizerConfig = optim.OptimizerConfig(1e-4)

  def __post_init__(self):
    _check_coefs(self, 'betas', strict=True)
    schema.positive(self, 'steps', 'batch_size')
    try:  # The loss's own checks (loss, label_smoothing).
      self.preference_config(min(self.betas, default=1.0))
    except ValueError as e:
      raise ValueError(str(e).replace('config.algo.', 'config.dpo.')) from None

  def preference_config(self, beta: float) -> preference.PreferenceConfig:
    return preference.PreferenceConfig(
        loss=self.loss, beta=beta, label_smoothing=self.label_smoothing)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`config.eval`: gold, proxy and KL of the policies' held-out samples."""

  every: int = 25  # Steps between gold / proxy / KL measurements.
  batch_size: int = 256  # Held-out prompts per measurement.
  samples: int = 2  # Samples per prompt (temperature 1).

  def __post_init__(self):
    schema.positive(self, 'every', 'batch_size', 'samples')


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every section of the study's config, parsed and checked."""

  run: RunConfig
  model: tfm.TransformerConfig
  task_name: str
  task: Any  # The task's own config dataclass.
  data: text_rl.DataConfig
  sft: text_rl.SFTConfig
  gold: GoldConfig
  pairs: PairsConfig
  rm: RewardModelConfig
  rl: text_rl.RLConfig
  ppo: PPOSweepConfig
  grpo: GRPOSweepConfig
  dpo: DPOSweepConfig
  eval: EvalConfig

  def coefs(self, method: str) -> tuple[float, ...]:
    """The KL coefficients of `method`'s runs."""
    return getattr(getattr(self, method), COEF_FIELDS[method][0])


_SECTIONS = {'data': text_rl.DataConfig, 'sft': text_rl.SFTConfig,
             'gold': GoldConfig, 'pairs': PairsConfig, 'rm': RewardModelConfig,
             'rl': text_rl.RLConfig, 'ppo': PPOSweepConfig,
             'grpo': GRPOSweepConfig, 'dpo': DPOSweepConfig,
             'eval': EvalConfig}
# Sections read elsewhere: model and task (below), mesh (parallel.make_mesh)
# and distributed (experiments/main.py).
_OTHER_SECTIONS = ('model', 'task', 'mesh', 'distributed')


def parse(config: ml_collections.ConfigDict) -> Settings:
  """Reads every section through its schema; errors name the field."""
  top, sections = schema.parse_sections(config, _SECTIONS, _OTHER_SECTIONS)
  task_name, task = tasks.parse(config.get('task'))
  spec = tasks.get(task_name)
  if ANSWER_FIELD not in spec.fields:
    raise ValueError(
        f'config.task.name={task_name!r} has no {ANSWER_FIELD!r} field '
        f'(its fields: {list(spec.fields)}); the gold reward compares the '
        'completion with an integer answer.')
  return Settings(
      run=schema.parse(RunConfig, top, 'config'),
      model=schema.parse(tfm.TransformerConfig, config.get('model'),
                         'config.model'),
      task_name=task_name,
      task=task,
      **sections)


def validate(settings: Settings, tokenizer: ByteTokenizer,
             mesh: jax.sharding.Mesh) -> None:
  """The checks that span sections; each error names the fields."""
  if jax.process_count() > 1:
    raise ValueError('The rlhf_gold study runs on one host (its pair-labelling '
                     'stage gathers samples there); use one process, with any '
                     'config.mesh over its devices.')
  model_cfg, data, rl = settings.model, settings.data, settings.rl
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise ValueError(f'The tokenizer has {tokenizer.vocab_size} tokens but '
                     f'config.model.vocab_size={model_cfg.vocab_size}; raise '
                     'config.model.vocab_size.')
  if not model_cfg.value_head:
    raise ValueError("config.model.value_head must be True: PPO's critic and "
                     'the reward model are scalar heads on the trunk.')
  need = data.max_prompt_len + max(rl.max_new_tokens, data.max_target_len)
  if need > model_cfg.max_seq_len:
    raise ValueError(
        f'config.data.max_prompt_len + config.rl.max_new_tokens = {need} '
        f'tokens do not fit config.model.max_seq_len={model_cfg.max_seq_len}; '
        'shorten them or raise config.model.max_seq_len.')
  defaults = text_rl.RLConfig()
  for name in UNUSED_RL_FIELDS:
    if getattr(rl, name) != getattr(defaults, name):
      raise ValueError(f'config.rl.{name}={getattr(rl, name)!r} is not '
                       'supported by the rlhf_gold study; leave it at '
                       f'{getattr(defaults, name)!r}.')
  if rl.group_size < 2:
    raise ValueError(f'config.rl.group_size={rl.group_size}: GRPO needs at '
                     'least 2 samples per prompt.')
  shards = parallel.batch_size_divisor(mesh)
  for name, value in (('sft.batch_size', settings.sft.batch_size),
                      ('eval.batch_size', settings.eval.batch_size),
                      ('pairs.batch_size', settings.pairs.batch_size),
                      ('rm.batch_size', settings.rm.batch_size),
                      ('dpo.batch_size', settings.dpo.batch_size)):
    if value % shards:
      raise ValueError(f'config.{name}={value} must be divisible by the '
                       f'{shards} batch shards (mesh data x fsdp).')
  if rl.num_prompts % shards:
    raise ValueError('config.rl.batch_size / config.rl.group_size prompts per '
                     f'step must be divisible by the {shards} batch shards '
                     '(mesh data x fsdp).')
  num_test = getattr(settings.task, 'num_test', None)
  for name, value in (('pairs.num_heldout', settings.pairs.num_heldout),
                      ('eval.batch_size', settings.eval.batch_size)):
    if num_test is not None and value > num_test:
      raise ValueError(f'config.{name}={value} needs as many held-out '
                       f'prompts; config.task.num_test={num_test}.')
  if not any(settings.coefs(m) for m in METHODS):
    raise ValueError('config.ppo.kl_coefs, config.grpo.betas and '
                     'config.dpo.betas are all empty: give at least one run.')


def gold_reward(rollout: Rollout, batch, *, eos_id: int,
                scale: float) -> jax.Array:
  """The hidden "human": f32[B] in [0, 1], exp(-|value - answer| / scale).

  A completion that is not an integer followed by EOS gets 0. Smooth in the
  answer's error, so that near misses are preferred to far ones and labels
  carry information beyond right / wrong.
  """
  value, ok = text_rewards.parse_integer(rollout.actions, rollout.mask, eos_id)
  ok = ok & text_rewards.ended_with_eos(rollout, eos_id)
  error = jnp.abs(value - batch[ANSWER_FIELD]).astype(jnp.float32)
  return jnp.where(ok, jnp.exp(-error / scale), 0.0)


def run_name(method: str, coef: float) -> str:
  return f'{method}_{COEF_FIELDS[method][1]}{coef:g}'


def _prompts(task: text_rl.Task, split: str, start: int, n: int):
  records = task.train if split == 'train' else task.test
  return task.rl_fields(task.collate(pipeline.get_batch(
      records, range(start, start + n))))


def _copy(tree):
  # A new buffer per leaf: a state built from the warm start's parameters is
  # donated to its steps, and the warm start's own buffers must survive it.
  return jax.tree.map(jnp.copy, tree)


# --- Stage 2: preference pairs ----------------------------------------------

def make_pairs(pairs: PairsConfig, seed: int, workdir: epath.Path,
               task: text_rl.Task, env: TextEnv, sft_params, gold_fn,
               layout: parallel.Layout):
  """Training and held-out triples labelled by the gold reward (cached)."""
  path = workdir / 'pairs' / 'pairs.npz'
  if path.exists():
    with path.open('rb') as f:
      saved = dict(np.load(f))
    split = lambda prefix: {k[len(prefix):]: v for k, v in saved.items()
                            if k.startswith(prefix)}
    return (pref_data.PreferenceData(split('train/')),
            pref_data.PreferenceData(split('heldout/')))
  pair_env = dataclasses.replace(env, num_samples=2)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(layout.mesh))
  def sample(params, batch, key):
    rollout = pair_env.rollout(params, batch, key)
    gold = gold_fn(rollout, rollout_lib.repeat_batch(batch, 2))
    return rollout.actions, rollout.mask, gold

  rng = np.random.default_rng([seed, 3])
  key = jax.random.fold_in(jax.random.key(seed), 3)
  out = {}
  n = pairs.batch_size
  for split, num, records in (('train', pairs.num_train, task.train),
                              ('heldout', pairs.num_heldout, task.test)):
    parts = []
    for start in range(0, num, n):
      # Training prompts cycle when there are more pairs than prompts, each
      # time with fresh samples.
      batch = task.rl_fields(task.collate(pipeline.get_batch(
          records, [(start + i) % len(records) for i in range(n)])))
      key, sub = jax.random.split(key)
      actions, mask, gold = jax.device_get(
          sample(sft_params, layout.batch(batch), sub))
      t = actions.shape[1]
      gold = gold.reshape(n, 2)
      chosen, rejected = pref_data.pairs_from_samples(
          gold, rng, strategy='random', label=pairs.label,
          temperature=pairs.temperature)
      triples = pref_data.triples_from_samples(
          batch['prompt'], batch['prompt_mask'], actions.reshape(n, 2, t),
          mask.reshape(n, 2, t), chosen, rejected)
      rows = np.arange(n)
      triples['gold_chosen'] = gold[rows, chosen]
      triples['gold_rejected'] = gold[rows, rejected]
      parts.append(triples)
    out[split] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  path.parent.mkdir(parents=True, exist_ok=True)
  flat = {f'{s}/{k}': v for s, d in out.items() for k, v in d.items()}
  with path.open('wb') as f:
    np.savez(f, **flat)
  return (pref_data.PreferenceData(out['train']),
          pref_data.PreferenceData(out['heldout']))


def _pair_fields(batch):
  return {k: batch[k] for k in pref_data.FIELDS}


def _fit(name: str, workdir: epath.Path, state, *, step_fn, batch_fn, key,
         total_steps: int, log_every: int, eval_every: int, eval_fn,
         checkpoint_every: int, max_checkpoints: int, show=('reward/mean',),
         plot_keys=('reward/mean', 'loss', 'kl', *EVAL_KEYS)):
  """One stage's run under `workdir/name` with the shared loop.

  A finished run is restored and left as it is (its plot too).
  Returns:
    (final state, run directory, whether any step ran now).
  """
  run_dir = workdir / name
  state, trained = loop.run_stage(
      run_dir, state, step_fn=step_fn, batch_fn=batch_fn, key=key,
      config=loop.LoopConfig(total_steps=total_steps, log_every=log_every,
                             eval_every=eval_every,
                             checkpoint_every=checkpoint_every,
                             progress_desc=name, progress_show=show),
      eval_fn=eval_fn, max_checkpoints=max_checkpoints,
      plot=(plot_keys, 'training.png', name))
  return state, run_dir, trained


# --- Stage 3: the proxy reward model -----------------------------------------

def rm_trunk(settings: Settings, rm_cfg: RewardModelConfig,
             workdir: epath.Path, begun: 'Start', layout: parallel.Layout):
  """The proxy's initial trunk: the policy's warm start, trained further for
  `rm_cfg.trunk_steps` supervised steps (under `workdir/rm_trunk/sft`)."""
  if not rm_cfg.trunk_steps:
    return begun.sft_params
  sft = dataclasses.replace(settings.sft, steps=rm_cfg.trunk_steps)
  sft_env = dataclasses.replace(begun.env, sampling=Sampling(), num_samples=1)
  return text_rl.warm_start(sft, settings.run.seed + 11, workdir / 'rm_trunk',
                            begun.task, sft_env, _copy(begun.sft_params),
                            layout)


def train_reward_model(cfg: RewardModelConfig, seed: int,
                       workdir: epath.Path, model_cfg: tfm.TransformerConfig,
                       sft_params, train_pairs, heldout_pairs,
                       layout: parallel.Layout):
  """Trains the proxy (stage 3); returns its model, params, held-out metrics."""
  rm_cfg = rm.reward_model_config(model_cfg)
  model = tfm.Transformer(rm_cfg)
  k = cfg.ensemble_size
  init_key = jax.random.fold_in(jax.random.key(seed), 4)
  tx = optim.make(cfg.optimizer, cfg.steps)
  policy = LMPolicy(model).with_adapters(cfg.lora)
  scorer = (lora_lib.AdaptedModel(model, policy.adapters)
            if cfg.lora.enabled else model)

  def build_state(lm_params):
    members = [rm.init_from_lm(lm_params, rm_cfg,
                               jax.random.fold_in(init_key, i))
               for i in range(k)]
    frozen = None
    if cfg.lora.enabled:  # The trunk, once; each member's adapters and head.
      frozen, _ = policy.split_base(members[0])
      frozen = policy.quantize_base(frozen)
      members = [{**policy.init_adapters(
          frozen, jax.random.fold_in(init_key, k + i)), **policy.split_base(
              member)[1]} for i, member in enumerate(members)]
    params = members[0] if k == 1 else rm.stack(members)
    opt_state = tx.init(params) if k == 1 else jax.vmap(tx.init)(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=opt_state, frozen=frozen)

  def score_fn(frozen):
    return functools.partial(rm.score_completions,
                             algo_base.bind(scorer, frozen))

  state = layout.init(build_state, sft_params)
  step_fn = layout.jit_step(
      lambda state, batch, key: preference.reward_model_step(
          state, batch, key, score_fn=score_fn(state.frozen), tx=tx,
          ensemble_size=k), state)
  heldout = layout.batch(_pair_fields(heldout_pairs.arrays))
  gold_chosen = heldout_pairs.arrays['gold_chosen']
  gold_rejected = heldout_pairs.arrays['gold_rejected']
  differ = gold_chosen != gold_rejected
  gold_order = np.where(gold_chosen > gold_rejected, 1.0, -1.0)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(layout.mesh))
  def scores(params, frozen, batch):
    fn = functools.partial(preference.pair_scores, score_fn(frozen))
    if k == 1:
      return fn(params, batch)
    chosen, rejected = jax.vmap(fn, in_axes=(0, None))(params, batch)
    return jnp.mean(chosen, axis=0), jnp.mean(rejected, axis=0)

  def evaluate(state):
    chosen, rejected = jax.device_get(scores(state.params, state.frozen,
                                             heldout))
    margin = chosen - rejected
    metrics = {'rm/heldout_accuracy': float(np.mean(margin > 0)),
               'rm/heldout_loss': float(np.mean(np.logaddexp(0.0, -margin)))}
    # Against the noise-free gold order too, of the pairs whose gold rewards
    # differ (undefined when they all tie).
    if differ.any():
      metrics['rm/heldout_gold_accuracy'] = float(np.mean(
          (margin * gold_order > 0)[differ]))
    return metrics

  state, run_dir, _ = _fit(
      'rm', workdir, state, step_fn=step_fn,
      batch_fn=lambda s: layout.batch(_pair_fields(train_pairs.batch(
          s, cfg.batch_size, seed=seed + 4))),
      key=jax.random.fold_in(jax.random.key(seed), 5),
      total_steps=cfg.steps, log_every=cfg.log_every,
      eval_every=cfg.eval_every, eval_fn=evaluate,
      checkpoint_every=cfg.steps, max_checkpoints=1,
      show=('loss', 'accuracy'),
      plot_keys=('loss', 'accuracy', 'rm/heldout_accuracy',
                 'rm/heldout_gold_accuracy'))
  # The loop evaluated the final model last.
  final = [r for r in writers.read_metrics(str(run_dir))
           if 'rm/heldout_accuracy' in r][-1]
  params = state.params
  if cfg.lora.enabled:  # Adapters folded into the trunk: a plain model.
    merge = lambda p: lora_lib.merge(state.frozen, p, cfg.lora)
    params = merge(params) if k == 1 else rm.stack(
        [merge(jax.tree.map(lambda x, i=i: x[i], params)) for i in range(k)])
  return model, params, {k: v for k, v in final.items()
                         if k.startswith('rm/') and v is not None}


def proxy_reward_fn(cfg: RewardModelConfig, chunk: int, workdir: epath.Path,
                    model, params, train_pairs, layout: parallel.Layout):
  """The proxy as a reward, standardised over the warm start's samples (the
  training pairs' completions); the statistics are kept in
  `rm/proxy_stats.json`. `chunk`: pairs scored per call."""
  ensemble = cfg.ensemble_size > 1
  raw = learned.reward_model_reward(model, params, ensemble=ensemble,
                                    std_coef=cfg.std_coef)
  path = workdir / 'rm' / 'proxy_stats.json'
  if path.exists():
    stats = json.loads(path.read_text())
  else:
    score = jax.jit(lambda batch: raw(preference.completion_rollout(
        batch['prompt'], batch['prompt_mask'], batch['completion'],
        batch['completion_mask']), None),
                    out_shardings=parallel.replicated(layout.mesh))
    arrays = train_pairs.arrays
    values = []
    n = chunk
    for name in ('chosen', 'rejected'):
      for i in range(0, len(train_pairs), n):
        batch = {'prompt': arrays['prompt'][i:i + n],
                 'prompt_mask': arrays['prompt_mask'][i:i + n],
                 'completion': arrays[name][i:i + n],
                 'completion_mask': arrays[f'{name}_mask'][i:i + n]}
        values.append(jax.device_get(score(layout.batch(batch))))
    values = np.concatenate(values)
    stats = {'offset': float(np.mean(values)),
             'scale': float(np.std(values) + 1e-6)}
    path.write_text(json.dumps(stats))
  return learned.reward_model_reward(model, params, ensemble=ensemble,
                                     std_coef=cfg.std_coef, **stats)


# --- Stage 4: policies against the proxy -------------------------------------

def make_evaluator(cfg: EvalConfig, seed: int, task: text_rl.Task,
                   env: TextEnv, ref_params, gold_fn, proxy_fn,
                   layout: parallel.Layout):
  """params -> gold, proxy and KL(pi || pi_sft) of held-out samples."""
  eval_env = dataclasses.replace(env, sampling=Sampling(),
                                 num_samples=cfg.samples)
  batch = layout.batch(_prompts(task, 'test', 0, cfg.batch_size))
  key = jax.random.fold_in(jax.random.key(seed), 6)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(layout.mesh))
  def measure(params, ref_params, batch, key):
    rollout = eval_env.rollout(params, batch, key)
    per_seq = rollout_lib.repeat_batch(batch, eval_env.num_samples)
    ref_logp = eval_env.evaluate(ref_params, rollout).logp
    # Samples at temperature 1 carry pi's own log-probs: sum_t log pi -
    # log pi_sft is an unbiased estimate of the sequence-level KL.
    kl = jnp.sum(learned.per_token_kl(rollout.logp, ref_logp, rollout.mask),
                 axis=1)
    return {'eval/gold_reward': jnp.mean(gold_fn(rollout, per_seq)),
            'eval/proxy_reward': jnp.mean(proxy_fn(rollout, per_seq)),
            'eval/kl': jnp.mean(kl),
            'eval/exact_match': jnp.mean(text_rewards.exact_match(
                rollout, per_seq, eos_id=env.eos_id)),
            'eval/mean_length': jnp.mean(jnp.sum(rollout.mask, axis=1))}

  def evaluate(params) -> dict[str, float]:
    metrics = loop.to_python(measure(params, ref_params, batch, key))
    metrics['eval/sqrt_kl'] = math.sqrt(max(metrics['eval/kl'], 0.0))
    return metrics

  return evaluate


def rl_run(settings: Settings, workdir: epath.Path, method: str, coef: float,
           task: text_rl.Task, env: TextEnv, sft_params, proxy_fn, evaluate,
           layout: parallel.Layout):
  """PPO or GRPO against the proxy at one KL coefficient.

  Returns:
    (run directory, whether any step ran now).
  """
  run_cfg = settings.run
  steps = run_cfg.rl_steps(coef)
  algo = getattr(settings, method).algorithm(coef)
  tx = optim.make(settings.rl.optimizer, steps)
  init_key = jax.random.fold_in(jax.random.key(run_cfg.seed), 7)

  def build_state(sft_params):
    params = algo.init_params(env, _copy(sft_params), init_key)
    return TrainState.create(
        params, tx,
        ref_params=_copy(sft_params) if algo.uses_reference else None,
        algo_state=algos.init_algo_state(algo, params))

  state = layout.init(build_state, sft_params)
  step_fn = layout.jit_step(functools.partial(
      step_lib.rl_step, env=env, reward_fn=proxy_fn, algo=algo, tx=tx), state)
  num_prompts = settings.rl.num_prompts
  _, run_dir, trained = _fit(
      run_name(method, coef), workdir, state, step_fn=step_fn,
      batch_fn=lambda s: layout.batch(task.rl_fields(task.batch(s,
                                                                num_prompts))),
      key=jax.random.fold_in(jax.random.key(run_cfg.seed), 8),
      total_steps=steps, log_every=run_cfg.log_every,
      eval_every=settings.eval.every,
      eval_fn=lambda s: evaluate(algo.policy_params(s.params)),
      checkpoint_every=run_cfg.checkpoint_every,
      max_checkpoints=run_cfg.max_checkpoints)
  return run_dir, trained


def dpo_run(settings: Settings, workdir: epath.Path, beta: float,
            env: TextEnv, sft_params, train_pairs, evaluate,
            layout: parallel.Layout):
  """Offline DPO (or `config.dpo.loss`) on the training pairs.

  Returns:
    (run directory, whether any step ran now).
  """
  run_cfg, dpo = settings.run, settings.dpo
  cfg = dpo.preference_config(beta)
  tx = optim.make(dpo.optimizer, dpo.steps)

  def build_state(sft_params):
    params = _copy(sft_params)
    return TrainState.create(
        params, tx,
        ref_params=_copy(sft_params) if cfg.uses_reference else None)

  state = layout.init(build_state, sft_params)
  dpo_env = dataclasses.replace(env, sampling=Sampling(), num_samples=1)
  step_fn = layout.jit_step(functools.partial(
      preference.offline_step, cfg=cfg, env=dpo_env, tx=tx), state)
  _, run_dir, trained = _fit(
      run_name('dpo', beta), workdir, state, step_fn=step_fn,
      batch_fn=lambda s: layout.batch(_pair_fields(train_pairs.batch(
          s, dpo.batch_size, seed=run_cfg.seed + 9))),
      key=jax.random.fold_in(jax.random.key(run_cfg.seed), 9),
      total_steps=dpo.steps, log_every=run_cfg.log_every,
      eval_every=settings.eval.every, eval_fn=lambda s: evaluate(s.params),
      checkpoint_every=run_cfg.checkpoint_every,
      max_checkpoints=run_cfg.max_checkpoints, show=('loss', 'accuracy'))
  return run_dir, trained


# --- Summary and plot --------------------------------------------------------

def _eval_records(run_dir) -> list[dict]:
  return [r for r in writers.read_metrics(str(run_dir))
          if all(r.get(k) is not None for k in EVAL_KEYS)]


def plot_gold_vs_kl(curves: dict, sft: dict, path) -> None:
  """Gold and proxy reward against sqrt(KL), a row per method run."""
  methods = [m for m in METHODS if any(n.startswith(m + '_') for n in curves)]
  fig, axes = plots.plt.subplots(len(methods), 2, figsize=(10, 3.2 * len(methods)),
                           squeeze=False)
  try:
    for row, method in enumerate(methods):
      for col, (key, label) in enumerate((('eval/gold_reward', 'gold reward'),
                                          ('eval/proxy_reward',
                                           'proxy reward (standardised)'))):
        ax = axes[row, col]
        for name, records in curves.items():
          if not name.startswith(method + '_'):
            continue
          xs = [math.sqrt(max(r['eval/kl'], 0.0)) for r in records]
          ax.plot(xs, [r[key] for r in records], marker='.', label=name)
        ax.axhline(sft[key], color='gray', linestyle=':', linewidth=1,
                   label='sft')
        ax.set_title(f'{method}: {label}')
        ax.set_xlabel('sqrt(KL(pi || pi_sft)) [sqrt nats]')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle('Reward over-optimisation (Gao et al. 2022) in small')
    fig.tight_layout()
    plots.save(fig, path)
  finally:
    plots.plt.close(fig)


# An over-optimisation peak, on the evaluations smoothed over PEAK_WINDOW
# consecutive points (one evaluation's gold mean has a standard error of
# about 0.02, its proxy mean about 0.05): gold rises at least PEAK_RISE above
# the warm start, then ends at least PEAK_FALL below its peak, while the
# proxy ends no lower than it was at the gold peak.
PEAK_RISE = 0.03
PEAK_FALL = 0.05
PEAK_WINDOW = 3


def overoptimised(records: list[dict], sft_gold: float) -> bool:
  """Whether one run's eval records show the over-optimisation peak."""
  if len(records) < 2 * PEAK_WINDOW:
    return False
  smooth = lambda key: np.convolve([r[key] for r in records],
                                   np.ones(PEAK_WINDOW) / PEAK_WINDOW,
                                   mode='valid')
  gold, proxy = smooth('eval/gold_reward'), smooth('eval/proxy_reward')
  peak = int(np.argmax(gold))
  return bool(gold[peak] - sft_gold >= PEAK_RISE
              and gold[peak] - gold[-1] >= PEAK_FALL
              and proxy[-1] >= proxy[peak])


def summarize(settings: Settings, rm_metrics: dict, sft: dict, curves: dict,
              times: dict[str, float]) -> dict:
  """`times`: this invocation's `wall_time_s` and `cpu_time_s`."""
  summary = {**times, **rm_metrics,
             'gold_reward/sft': sft['eval/gold_reward'],
             'proxy_reward/sft': sft['eval/proxy_reward'],
             'exact_match/sft': sft['eval/exact_match']}
  for name, records in curves.items():
    last = records[-1]
    peak = max(records, key=lambda r: r['eval/gold_reward'])
    summary[f'run/{name}/gold_reward'] = last['eval/gold_reward']
    summary[f'run/{name}/proxy_reward'] = last['eval/proxy_reward']
    summary[f'run/{name}/kl'] = last['eval/kl']
    summary[f'run/{name}/exact_match'] = last['eval/exact_match']
    summary[f'run/{name}/peak_gold_reward'] = peak['eval/gold_reward']
    summary[f'run/{name}/kl_at_peak_gold'] = peak['eval/kl']
    summary[f'run/{name}/overoptimised'] = overoptimised(
        records, sft['eval/gold_reward'])
  for method in METHODS:
    coefs = settings.coefs(method)
    if not coefs:  # The method was left out.
      continue
    main = curves[run_name(method, coefs[0])][-1]
    summary[f'gold_reward/{method}'] = main['eval/gold_reward']
    summary[f'proxy_reward/{method}'] = main['eval/proxy_reward']
    summary[f'kl/{method}'] = main['eval/kl']
  return summary


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the whole study; returns the summary."""
  # The process's CPU time too: wall time on a shared machine says little.
  start_time = (time.time(), time.process_time())
  settings = parse(config)
  tokenizer = ByteTokenizer()
  mesh = parallel.make_mesh(config.mesh)
  validate(settings, tokenizer, mesh)
  workdir = workdir_lib.prepare_workdir(workdir)
  with parallel.activate(mesh):
    return _run(settings, workdir, tokenizer,
                parallel.Layout(mesh,
                                text_rl.model_logical_axes(settings.model)),
                start_time)


@dataclasses.dataclass(frozen=True)
class Start:
  """What stages 1 and 2 give the later ones."""

  task: text_rl.Task
  env: TextEnv  # The policy's sampling environment.
  gold_fn: Any  # (rollout, batch) -> f32[B], the hidden gold reward.
  sft_params: Any  # The warm start's parameters.
  train_pairs: pref_data.PreferenceData
  heldout_pairs: pref_data.PreferenceData


def start(settings: Settings, workdir: epath.Path, tokenizer,
          layout: parallel.Layout) -> Start:
  """Stages 1 and 2 (or their saved results): warm start and pairs."""
  seed = settings.run.seed
  model = tfm.Transformer(settings.model)
  env = text_rl.make_env(settings.rl, model, tokenizer)
  gold_fn = functools.partial(gold_reward, eos_id=tokenizer.eos_id,
                              scale=settings.gold.scale)
  task = text_rl.load_task(settings.task_name, settings.task, settings.data,
                           seed, workdir, tokenizer)
  params = layout.init(functools.partial(tfm.init_params, settings.model),
                       jax.random.key(seed))
  if settings.sft.steps:
    sft_env = dataclasses.replace(env, sampling=Sampling(), num_samples=1)
    params = text_rl.warm_start(settings.sft, seed, workdir, task, sft_env,
                                params, layout)
  train_pairs, heldout_pairs = make_pairs(settings.pairs, seed, workdir, task,
                                          env, params, gold_fn, layout)
  return Start(task, env, gold_fn, params, train_pairs, heldout_pairs)


def _run(settings: Settings, workdir: epath.Path, tokenizer,
         layout: parallel.Layout, start_time: tuple[float, float]) -> dict:
  seed = settings.run.seed
  begun = start(settings, workdir, tokenizer, layout)
  task, env, gold_fn = begun.task, begun.env, begun.gold_fn
  sft_params = begun.sft_params
  train_pairs, heldout_pairs = begun.train_pairs, begun.heldout_pairs
  rm_model, rm_params, rm_metrics = train_reward_model(
      settings.rm, seed, workdir, settings.model,
      rm_trunk(settings, settings.rm, workdir, begun, layout), train_pairs,
      heldout_pairs, layout)
  logging.warning('Proxy reward model: held-out accuracy %.3f (gold order '
                  '%.3f).', rm_metrics['rm/heldout_accuracy'],
                  rm_metrics.get('rm/heldout_gold_accuracy', float('nan')))
  proxy_fn = proxy_reward_fn(settings.rm, settings.pairs.batch_size, workdir,
                             rm_model, rm_params, train_pairs, layout)
  evaluate = make_evaluator(settings.eval, seed, task, env, sft_params,
                            gold_fn, proxy_fn, layout)

  runs = {}
  for method in ('ppo', 'grpo'):
    for coef in settings.coefs(method):
      runs[run_name(method, coef)] = rl_run(
          settings, workdir, method, coef, task, env, sft_params, proxy_fn,
          evaluate, layout)
  for beta in settings.dpo.betas:
    runs[run_name('dpo', beta)] = dpo_run(
        settings, workdir, beta, env, sft_params, train_pairs, evaluate,
        layout)
  run_dirs = {name: run_dir for name, (run_dir, _) in runs.items()}
  curves = {name: _eval_records(d) for name, d in run_dirs.items()}
  # Every run starts from the warm start, measured with the same samples
  # (fixed key and prompts): their step-0 point is the warm start's.
  sft = curves[next(iter(curves))][0]
  summary = summarize(settings, rm_metrics, sft, curves,
                      {'wall_time_s': time.time() - start_time[0],
                       'cpu_time_s': time.process_time() - start_time[1]})
  plot_path = workdir / 'gold_vs_kl.png'
  if parallel.is_primary() and (
      not plot_path.exists() or any(trained for _, trained in runs.values())):
    plot_gold_vs_kl(curves, sft, plot_path)
    writers.write_summary(str(workdir), summary)
  return summary
