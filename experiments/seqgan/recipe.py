"""SeqGAN on the synthetic-oracle benchmark, with its baselines, end to end.

Yu et al. 2017, "SeqGAN: Sequence Generative Adversarial Nets with Policy
Gradient", section 4: a randomly initialised LSTM (the oracle, every weight
~ N(0, 1)) defines the true distribution; 10,000 of its samples are the
training data; a model is scored by NLL-oracle, the oracle's mean per-token
negative log-likelihood of 10,000 of the model's samples (lower is better).

One run trains, in order, each phase a resumable sub-run of `loop.fit` with
its own metrics.jsonl, tensorboard/, checkpoints/ and training.png:

  WORKDIR/pretrain/       MLE pretraining of the generator (one fit step =
                          one epoch over the data).
  WORKDIR/discriminator/  discriminator pretraining (one step = one round:
                          fresh negatives, then `epochs` passes).
  WORKDIR/mle/            baseline: MLE epochs continued from pretraining.
  WORKDIR/pg_bleu/        baseline: policy gradient, reward = BLEU of the
                          Monte-Carlo completions against the training data.
  WORKDIR/seqgan/         SeqGAN: policy gradient, reward = the
                          discriminator's P(real) of the completions; each
                          epoch is 1 generator step, then `discriminator_rounds`
                          rounds of `discriminator_epochs` passes over fresh
                          negatives and as many real samples.

All three branches start from the pretrained generator and run
`adversarial.epochs` epochs; NLL-oracle is evaluated every `eval.every`
epochs. WORKDIR/summary.json holds `nll_oracle/{random_init, pretrained, mle,
pg_bleu, seqgan, oracle_data}` and WORKDIR/nll_oracle.png the three curves
against epoch. A restarted run skips finished phases and resumes the others
from their newest checkpoints.

Both policy-gradient branches minimise the library's REINFORCE surrogate
(`algos.reinforce.pg_loss_fn`) with the Monte-Carlo per-token rewards as
per-token advantages, as SeqGAN's generator loss (eq. 8 with the rewards of
eq. 4, no baseline). Roll-outs use a delayed copy of the generator, updated
after each generator step as rate * copy + (1 - rate) * generator; like the
released code, the embedding is copied outright.

Data are generated in memory, not through a TFDS builder: the training set is
a deterministic function of `config.seed` (10,000 x 20 int32, 800 KB, sampled
in about a second by one jitted scan), every phase reads it on device inside
its jitted epoch, and a restarted run regenerates exactly the same array, so
files would only add a host-side pipeline between two device computations.
"""

import dataclasses
import functools
import time
from typing import Any, ClassVar

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxrlgen import parallel
from jaxrlgen import schema
from jaxrlgen.algos import base
from jaxrlgen.algos import reinforce
from jaxrlgen.algos import sft
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs import recurrent
from jaxrlgen.envs.recurrent import RecurrentEnv
from jaxrlgen.envs.recurrent import supervised_rollout
from jaxrlgen.models import discriminator as disc_lib
from jaxrlgen.models import lstm
from jaxrlgen.policies import RecurrentPolicy
from jaxrlgen.rewards import bleu as bleu_lib
from jaxrlgen.rewards import montecarlo
from jaxrlgen.train import loop
from jaxrlgen.train import plots
from jaxrlgen.train import workdir as workdir_lib
from jaxrlgen.train import writers

PyTree = Any
METHODS = ('mle', 'pg_bleu', 'seqgan')
# Sub-run directories, in the order the run trains them.
PHASES = ('pretrain', 'discriminator') + METHODS
NLL_KEY = 'nll_oracle'
_KEYS = dict(oracle=0, data=1, generator=2, discriminator=3, eval=4,
             reference=5, phase=10)


# ----------------------------------------------------------------------------
# The config schema: one frozen dataclass per section of the config file
# (`experiments/seqgan/config.py` builds its defaults from these), checked by
# `parse_config` before anything is computed.

_DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class OracleConfig:
  """The oracle LSTM, whose samples are the real data."""

  embed_dim: int = 32  # Oracle embedding size.
  hidden_dim: int = 32  # Oracle LSTM size.
  init_std: float = 1.0  # Every oracle weight ~ N(0, init_std^2).
  num_samples: int = 10_000  # Oracle samples: the training data (real data).

  def __post_init__(self):
    schema.positive(self, 'embed_dim', 'hidden_dim', 'init_std')
    schema.positive(self, 'num_samples')


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """The generator LSTM and its sampler."""

  embed_dim: int = 32  # Generator embedding size.
  hidden_dim: int = 32  # Generator LSTM size.
  init_std: float = 0.1  # Every generator weight ~ N(0, init_std^2).
  sample_block: int = 128  # Block size of the two-level inverse-CDF sampler.
  logprob_chunk: int = 1  # Time steps per chunk of teacher-forced logits.

  def __post_init__(self):
    schema.positive(self, 'embed_dim', 'hidden_dim', 'init_std')
    schema.positive(self, 'sample_block', 'logprob_chunk')


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """MLE pretraining of the generator (and the MLE baseline after it)."""

  SPECIAL: ClassVar[schema.Special] = {
      'epochs': schema.Means(zero='no MLE pretraining'),
      'max_grad_norm': schema.Means(zero='no clipping')}

  epochs: int = 120  # MLE epochs (passes over the 10,000 sequences).
  batch_size: int = 64  # Sequences per MLE step.
  learning_rate: float = 0.01  # Adam.
  max_grad_norm: float = 5.0  # Global-norm gradient clipping; 0: off.

  def __post_init__(self):
    schema.non_negative(self, 'epochs', 'max_grad_norm')
    schema.positive(self, 'batch_size', 'learning_rate')


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
  """The CNN discriminator (Zhang & LeCun 2015 with a highway layer)."""

  SPECIAL: ClassVar[schema.Special] = {
      'dropout_rate': schema.Means(zero='no dropout'),
      'l2_reg': schema.Means(zero='no L2 penalty')}

  embed_dim: int = 64  # Discriminator embedding size.
  filter_widths: tuple[int, ...] = disc_lib.PAPER_WIDTHS  # Window widths.
  num_filters: tuple[int, ...] = disc_lib.PAPER_FILTERS  # Filters per width.
  dropout_rate: float = 0.25  # Before the output layer (keep prob. 0.75).
  l2_reg: float = 0.2  # L2 weight on the output layer.
  learning_rate: float = 1e-4  # Adam.
  batch_size: int = 64  # Sequences per discriminator step.
  dtype: str = 'float32'  # Training compute dtype: float32 | bfloat16.
  score_dtype: str = 'bfloat16'  # Compute dtype of reward scoring (forward).
  score_chunk: int = 256  # Sequences per forward pass when scoring rewards.

  def __post_init__(self):
    schema.positive(self, 'embed_dim')
    if not 0 <= self.dropout_rate < 1:
      raise schema.FieldError(
          'dropout_rate', f'={self.dropout_rate} must be in [0, 1).')
    schema.positive(self, 'learning_rate', 'batch_size', 'score_chunk')
    schema.non_negative(self, 'l2_reg')
    schema.one_of(self, 'dtype', _DTYPES)
    schema.one_of(self, 'score_dtype', _DTYPES)


@dataclasses.dataclass(frozen=True)
class DiscriminatorPretrainConfig:
  """Discriminator pretraining against the pretrained generator."""

  SPECIAL: ClassVar[schema.Special] = {
      'rounds': schema.Means(zero='no discriminator pretraining')}

  rounds: int = 50  # Rounds of fresh negatives.
  epochs: int = 3  # Passes over each round's negatives + positives.
  num_negatives: int = 2_000  # Shrunk (paper 10,000): generated per round.

  def __post_init__(self):
    schema.non_negative(self, 'rounds')
    schema.positive(self, 'epochs', 'num_negatives')


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
  """The policy-gradient branches (PG-BLEU and SeqGAN) and their length."""

  SPECIAL: ClassVar[schema.Special] = {
      'epochs': schema.Means(zero='no adversarial training'),
      'rollout_update_rate': schema.Means(
          zero='the rollout copy is the generator itself'),
      'max_grad_norm': schema.Means(zero='no clipping')}

  epochs: int = 50  # Shrunk (released code: 200-800): epochs of every method.
  batch_size: int = 64  # Sequences per generator step.
  num_rollouts: int = 16  # Monte-Carlo completions per prefix (SeqGAN).
  rollouts_per_scan: int = 1  # Completions per prefix sampled by one scan.
  rollout_update_rate: float = 0.8  # Delayed copy: rate * copy + (1-rate) * G.
  learning_rate: float = 0.01  # Adam of the adversarial generator steps.
  max_grad_norm: float = 5.0  # Global-norm gradient clipping; 0: off.
  discriminator_rounds: int = 5  # Discriminator rounds per generator step.
  discriminator_epochs: int = 3  # Passes over each round's data.
  num_negatives: int = 320  # Shrunk (paper 10,000): negatives per round.

  def __post_init__(self):
    schema.non_negative(self, 'epochs', 'max_grad_norm')
    schema.positive(self, 'batch_size', 'num_rollouts', 'rollouts_per_scan',
                    'learning_rate', 'discriminator_rounds',
                    'discriminator_epochs', 'num_negatives')
    schema.in_range(self, 'rollout_update_rate', 0.0, 1.0)
    schema.divisible(self, 'num_rollouts', 'rollouts_per_scan')


@dataclasses.dataclass(frozen=True)
class PgBleuConfig:
  """The PG-BLEU baseline (reward: BLEU against the training data)."""

  SPECIAL: ClassVar[schema.Special] = {
      'smooth_epsilon': schema.Means(zero='no smoothing')}

  max_order: int = 3  # BLEU-3, as the released PG-BLEU code (weights 1/3).
  smooth_epsilon: float = 0.1  # Numerator for orders with no match (0: off).
  learning_rate: float = 0.001  # Adam's default: released code ignores 0.01.
  num_rollouts: int = 16  # Monte-Carlo completions per prefix.

  def __post_init__(self):
    schema.positive(self, 'max_order', 'learning_rate', 'num_rollouts')
    schema.non_negative(self, 'smooth_epsilon')


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """NLL-oracle evaluation."""

  SPECIAL: ClassVar[schema.Special] = {
      'every': schema.Means(zero='at the start and the end only')}

  every: int = 5  # Epochs between NLL-oracle evaluations (paper: 5).
  num_samples: int = 10_000  # Generator samples scored by the oracle.
  chunk: int = 250  # Sequences per sampling / scoring chunk.

  def __post_init__(self):
    schema.non_negative(self, 'every')
    schema.positive(self, 'num_samples', 'chunk')


@dataclasses.dataclass(frozen=True)
class SeqGANConfig:
  """The whole config: the top-level fields, the sections, and the checks
  that involve several sections."""

  SPECIAL: ClassVar[schema.Special] = {
      'seed': schema.Means(zero='a seed like any other'),
      'start_token': schema.Means(zero='word 0 (an ordinary word)'),
      'checkpoint_every': schema.Means(zero='checkpoints at the end only')}

  recipe: str = 'experiments.seqgan.recipe:run'  # The recipe that runs it.
  seed: int = 88  # Seeds the oracle, its data, inits, sampling (paper: 88).
  vocab_size: int = 5000  # Words, shared by oracle, generator, discriminator.
  length: int = 20  # Tokens per sequence (no end token).
  start_token: int = 0  # First input of the LSTMs (an ordinary word too).
  log_every: int = 1  # Epochs (or discriminator rounds) between log lines.
  checkpoint_every: int = 10  # Epochs between checkpoints (and at the end).
  max_checkpoints: int = 2  # Checkpoints kept per phase.
  oracle: OracleConfig = OracleConfig()
  generator: GeneratorConfig = GeneratorConfig()
  pretrain: PretrainConfig = PretrainConfig()
  discriminator: DiscriminatorConfig = DiscriminatorConfig()
  discriminator_pretrain: DiscriminatorPretrainConfig = (
      DiscriminatorPretrainConfig())
  adversarial: AdversarialConfig = AdversarialConfig()
  pg_bleu: PgBleuConfig = PgBleuConfig()
  eval: EvalConfig = EvalConfig()

  def __post_init__(self):
    schema.non_negative(self, 'seed')
    for name in ('vocab_size', 'length'):
      if getattr(self, name) < 2:
        raise schema.FieldError(name, f'={getattr(self, name)} must be >= 2.')
    schema.in_range(self, 'start_token', 0, self.vocab_size - 1)
    schema.positive(self, 'log_every', 'max_checkpoints')
    schema.non_negative(self, 'checkpoint_every')
    n = self.oracle.num_samples
    if self.pretrain.batch_size > n:
      raise schema.FieldError(
          'pretrain.batch_size', f'={self.pretrain.batch_size} exceeds the {n} '
          'training sequences (config.oracle.num_samples).')
    for section in ('discriminator_pretrain', 'adversarial'):
      negatives = getattr(self, section).num_negatives
      if negatives > n:
        raise schema.FieldError(
            f'{section}.num_negatives', f'={negatives} must be in [1, {n}]: '
            'each round pairs the negatives with as many distinct real '
            'sequences (config.oracle.num_samples).')
      if 2 * negatives < self.discriminator.batch_size:
        raise schema.FieldError(
            f'{section}.num_negatives', f'={negatives} gives {2 * negatives} '
            'sequences per round, fewer than one batch (config.discriminator.'
            f'batch_size={self.discriminator.batch_size}).')
    per_scan = self.adversarial.rollouts_per_scan
    if self.pg_bleu.num_rollouts % per_scan:
      raise schema.FieldError(
          'pg_bleu.num_rollouts', f'={self.pg_bleu.num_rollouts} must be a '
          f'multiple of config.adversarial.rollouts_per_scan={per_scan}.')
    if self.pg_bleu.max_order > self.length:
      raise schema.FieldError(
          'pg_bleu.max_order', f'={self.pg_bleu.max_order} must be in '
          f'[1, config.length={self.length}].')


def parse_config(
    config: ml_collections.ConfigDict | SeqGANConfig) -> SeqGANConfig:
  """The config as a SeqGANConfig; errors name the field (`config.a.b`)."""
  return schema.parse(SeqGANConfig, config, 'config')


# ----------------------------------------------------------------------------
# Pure steps: each is one jitted call per epoch (or round).


def delayed_copy(copy: PyTree, params: PyTree, rate: float) -> PyTree:
  """The roll-out network's update: rate * copy + (1 - rate) * params, with
  the embedding taken from `params` as in the released SeqGAN code."""
  mixed = jax.tree.map(lambda c, p: rate * c + (1.0 - rate) * p, copy, params)
  return {**mixed, 'embedding': params['embedding']}


def mle_epoch(state: TrainState, batch, key: jax.Array, *, env: RecurrentEnv,
              tx: optax.GradientTransformation, batch_size: int):
  """One shuffled pass of maximum likelihood over `batch['data']` i32[N, T]
  (the last N mod batch_size sequences of each shuffle are left out)."""
  data = batch['data']
  num_batches = data.shape[0] // batch_size
  order_key, update_key = jax.random.split(key)
  order = jax.random.permutation(order_key, data.shape[0])
  rollout = supervised_rollout(data[order[:num_batches * batch_size]])
  params, opt_state, metrics = base.minibatch_update(
      lambda p, r: sft.loss(env, p, r), tx, state.params, state.opt_state,
      rollout, update_key, num_minibatches=num_batches)
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), metrics


def generator_step(state: TrainState, key: jax.Array, *, env: RecurrentEnv,
                   tx: optax.GradientTransformation, score_fn,
                   num_rollouts: int, rollouts_per_scan: int, batch_size: int,
                   update_rate: float):
  """One policy-gradient step of the generator on Monte-Carlo rewards.

  Samples `batch_size` sequences, scores every prefix by `num_rollouts`
  completions of the delayed copy `state.algo_state['rollout_params']`,
  takes one optimizer step on the REINFORCE surrogate with those per-token
  rewards as advantages, then moves the delayed copy towards the generator.
  """
  sample_key, reward_key, update_key = jax.random.split(key, 3)
  rollout = env.rollout(state.params, recurrent.unconditional(batch_size),
                        sample_key)
  copy = state.algo_state['rollout_params']
  rewards = montecarlo.monte_carlo_rewards(
      env, copy, rollout.actions, rollout.mask, score_fn, num_rollouts,
      reward_key, rollouts_per_scan=rollouts_per_scan)
  loss_fn = reinforce.pg_loss_fn('sequence_sum', entropy_coef=0.0, kl_coef=0.0)
  params, opt_state, metrics = base.minibatch_update(
      lambda p, exp: loss_fn(env, p, exp), tx, state.params, state.opt_state,
      base.PolicyGradientExperience(rollout=rollout, advantages=rewards),
      update_key)
  algo_state = {**state.algo_state,
                'rollout_params': delayed_copy(copy, params, update_rate)}
  state = state.replace(step=state.step + 1, params=params,
                        opt_state=opt_state, algo_state=algo_state)
  return state, {**metrics, 'reward/mean': jnp.mean(rewards),
                 'reward/final': jnp.mean(rewards[:, -1])}


def train_discriminator(params, opt_state, tokens: jax.Array,
                        labels: jax.Array, key: jax.Array, *,
                        model: disc_lib.Discriminator,
                        tx: optax.GradientTransformation, epochs: int,
                        batch_size: int, l2_reg: float):
  """`epochs` shuffled passes over (tokens i32[N, L], labels i32[N]), one
  optimizer step per minibatch, each with its own dropout key."""
  n = tokens.shape[0]
  num_batches = n // batch_size

  def sgd_step(carry, minibatch):
    params, opt_state = carry
    x, y, dropout_key = minibatch
    grads, metrics = jax.grad(
        lambda p: disc_lib.classifier_loss(model, p, x, y, dropout_key,
                                           l2_reg=l2_reg), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), metrics

  def epoch(carry, key):
    order_key, dropout_key = jax.random.split(key)
    order = jax.random.permutation(order_key, n)[:num_batches * batch_size]
    order = order.reshape(num_batches, batch_size)
    return jax.lax.scan(sgd_step, carry, (
        tokens[order], labels[order],
        jax.random.split(dropout_key, num_batches)))

  (params, opt_state), metrics = jax.lax.scan(
      epoch, (params, opt_state), jax.random.split(key, epochs))
  return params, opt_state, jax.tree.map(jnp.mean, metrics)


def discriminator_round(params, opt_state, generator_params, real: jax.Array,
                        key: jax.Array, *, env: RecurrentEnv,
                        model: disc_lib.Discriminator,
                        tx: optax.GradientTransformation, num_negatives: int,
                        epochs: int, batch_size: int, l2_reg: float,
                        sample_chunk: int):
  """SeqGAN's discriminator round: `num_negatives` fresh generator samples
  and as many real sequences drawn from `real` i32[N, T], then `epochs`
  passes of `train_discriminator`."""
  negative_key, positive_key, train_key = jax.random.split(key, 3)
  negatives = env.sample(generator_params, num_negatives, negative_key,
                         chunk=sample_chunk)
  chosen = jax.random.choice(positive_key, real.shape[0], (num_negatives,),
                             replace=False)
  tokens = jnp.concatenate([real[chosen], negatives])
  labels = jnp.concatenate([jnp.full((num_negatives,), disc_lib.REAL),
                            jnp.full((num_negatives,), disc_lib.FAKE)])
  return train_discriminator(params, opt_state, tokens, labels, train_key,
                             model=model, tx=tx, epochs=epochs,
                             batch_size=batch_size, l2_reg=l2_reg)


def discriminator_pretrain_step(state: TrainState, batch, key: jax.Array,
                                **round_kwargs):
  """One pretraining round; `batch` holds `data` and the fixed `generator`."""
  params, opt_state, metrics = discriminator_round(
      state.params, state.opt_state, batch['generator'], batch['data'], key,
      **round_kwargs)
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), metrics


def pg_bleu_epoch(state: TrainState, batch, key: jax.Array, *,
                  smooth_epsilon: float, **generator_kwargs):
  """One generator step with the BLEU of each completion against
  `batch['references']` (the training data) as its score."""

  def score_fn(tokens):
    return bleu_lib.bleu(tokens, jnp.ones(tokens.shape, jnp.bool_),
                         batch['references'], smooth_epsilon=smooth_epsilon)

  return generator_step(state, key, score_fn=score_fn, **generator_kwargs)


def seqgan_epoch(state: TrainState, batch, key: jax.Array, *,
                 model: disc_lib.Discriminator,
                 score_model: disc_lib.Discriminator, score_chunk: int,
                 rounds: int, round_kwargs, **generator_kwargs):
  """SeqGAN's adversarial epoch: one generator step rewarded by the
  discriminator (`score_model`: the same parameters, possibly another compute
  dtype), then `rounds` discriminator rounds against the updated generator."""
  generator_key, discriminator_key = jax.random.split(key)
  discriminator = state.algo_state['discriminator']

  def score_fn(tokens):
    return disc_lib.probability_real(score_model, discriminator['params'],
                                     tokens, chunk=score_chunk)

  state, metrics = generator_step(state, generator_key, score_fn=score_fn,
                                  **generator_kwargs)

  def one_round(carry, key):
    params, opt_state, metrics = discriminator_round(
        *carry, state.params, batch['data'], key, model=model, **round_kwargs)
    return (params, opt_state), metrics

  (params, opt_state), round_metrics = jax.lax.scan(
      one_round, (discriminator['params'], discriminator['opt_state']),
      jax.random.split(discriminator_key, rounds))
  algo_state = {**state.algo_state,
                'discriminator': {'params': params, 'opt_state': opt_state}}
  return state.replace(algo_state=algo_state), {
      **metrics, **jax.tree.map(jnp.mean, round_metrics)}


def oracle_nll(oracle: RecurrentPolicy, oracle_params, tokens: jax.Array, *,
               chunk: int, time_chunk: int) -> jax.Array:
  """f32[] the oracle's mean per-token NLL of tokens i32[N, T], `chunk`
  sequences at a time."""
  n, t = tokens.shape
  chunk = min(chunk, n)
  num_chunks = -(-n // chunk)
  padded = jnp.pad(tokens, ((0, num_chunks * chunk - n), (0, 0)))
  logp = jax.lax.map(
      lambda x: oracle.token_logprobs(oracle_params, x,
                                      chunk_size=time_chunk)[0],
      padded.reshape(num_chunks, chunk, t))
  return -jnp.mean(logp.reshape(-1, t)[:n])


def sample_nll_oracle(params, oracle_params, key: jax.Array, *,
                      env: RecurrentEnv, oracle: RecurrentPolicy,
                      num_samples: int,
                      chunk: int, time_chunk: int) -> jax.Array:
  """NLL-oracle of `num_samples` fresh samples of the policy `params`."""
  samples = env.sample(params, num_samples, key, chunk=chunk)
  return oracle_nll(oracle, oracle_params, samples, chunk=chunk,
                    time_chunk=time_chunk)


# ----------------------------------------------------------------------------
# The recipe.


def lstm_config(cfg: OracleConfig | GeneratorConfig, *, vocab_size: int,
                start_token: int) -> lstm.LSTMConfig:
  """The model config of the oracle's or the generator's section."""
  return lstm.LSTMConfig(vocab_size=vocab_size, embed_dim=cfg.embed_dim,
                         hidden_dim=cfg.hidden_dim, start_token=start_token,
                         init_std=cfg.init_std)


def discriminator_config(cfg: DiscriminatorConfig, *, vocab_size: int,
                         length: int) -> disc_lib.DiscriminatorConfig:
  """The model config of the discriminator's section."""
  return disc_lib.DiscriminatorConfig(
      vocab_size=vocab_size, length=length, embed_dim=cfg.embed_dim,
      filter_widths=cfg.filter_widths, num_filters=cfg.num_filters,
      dropout_rate=cfg.dropout_rate, dtype=cfg.dtype)


def adam(learning_rate: float, max_grad_norm: float = 0.0):
  """Adam, after global-norm clipping when max_grad_norm > 0 (the released
  code clips the generator's gradients at 5, not the discriminator's)."""
  parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
  return optax.chain(*parts, optax.adam(learning_rate))


def _copy(tree):
  # Each state owns its buffers: the steps donate them.
  return jax.tree.map(jnp.copy, tree)


_PHASE_PLOTS = {
    'pretrain': (NLL_KEY, 'nll', 'entropy', 'grad_norm'),
    'discriminator': ('discriminator/loss', 'discriminator/accuracy'),
    'mle': (NLL_KEY, 'nll', 'entropy'),
    'pg_bleu': (NLL_KEY, 'reward/mean', 'entropy', 'grad_norm'),
    'seqgan': (NLL_KEY, 'reward/mean', 'discriminator/accuracy', 'entropy',
               'grad_norm'),
}


def run(config: ml_collections.ConfigDict | SeqGANConfig,
        workdir: str) -> dict:
  """Runs (or resumes) the whole experiment; returns the summary."""
  start_time = time.time()
  cfg = parse_config(config)  # Fails on a bad field before any compute.
  gen_cfg = lstm_config(cfg.generator, vocab_size=cfg.vocab_size,
                        start_token=cfg.start_token)
  oracle_cfg = lstm_config(cfg.oracle, vocab_size=cfg.vocab_size,
                           start_token=cfg.start_token)
  disc_cfg = discriminator_config(cfg.discriminator, vocab_size=cfg.vocab_size,
                                  length=cfg.length)
  workdir = workdir_lib.prepare_workdir(workdir)
  env = RecurrentEnv(RecurrentPolicy(lstm.LSTM(gen_cfg)), cfg.length,
                     sample_block=cfg.generator.sample_block,
                     logprob_chunk=cfg.generator.logprob_chunk)
  oracle_env = RecurrentEnv(RecurrentPolicy(lstm.LSTM(oracle_cfg)),
                            cfg.length,
                            sample_block=cfg.generator.sample_block)
  disc_model = disc_lib.Discriminator(disc_cfg)
  # Rewards need only the forward pass, which may run at another precision.
  score_model = disc_lib.Discriminator(dataclasses.replace(
      disc_cfg, dtype=cfg.discriminator.score_dtype))
  root = jax.random.key(cfg.seed)
  keys = {name: jax.random.fold_in(root, i) for name, i in _KEYS.items()}
  ev = cfg.eval

  # The oracle and its training data: deterministic in the seed.
  oracle_params = lstm.init_params(oracle_cfg, keys['oracle'])
  data = jax.jit(functools.partial(oracle_env.sample, chunk=ev.chunk),
                 static_argnums=1)(oracle_params, cfg.oracle.num_samples,
                                   keys['data'])
  nll_fn = lambda policy_env: jax.jit(functools.partial(
      sample_nll_oracle, env=policy_env, oracle=oracle_env.policy,
      num_samples=ev.num_samples, chunk=ev.chunk, time_chunk=1))
  # The reference point: the oracle's NLL of its own samples (its entropy).
  reference = {f'{NLL_KEY}/oracle_data': float(nll_fn(oracle_env)(
      oracle_params, oracle_params, keys['reference']))}
  generator_nll = nll_fn(env)

  def evaluate(state, offset=0):
    # Keyed by the epoch since initialisation, so a branch's first evaluation
    # repeats the last one of pretraining exactly.
    key = jax.random.fold_in(keys['eval'], offset + int(state.step))
    return {NLL_KEY: float(generator_nll(state.params, oracle_params, key))}

  def run_phase(name, state, *, step_fn, batch, total_steps, eval_fn=None,
                show=()):
    """Runs (or resumes, or skips when finished) one phase as a sub-run."""
    state, _ = loop.run_stage(
        workdir / name, state, step_fn=jax.jit(step_fn, donate_argnums=0),
        batch_fn=lambda step: batch,
        key=jax.random.fold_in(keys['phase'], PHASES.index(name)),
        config=loop.LoopConfig(total_steps=total_steps,
                               log_every=cfg.log_every, eval_every=ev.every,
                               checkpoint_every=cfg.checkpoint_every,
                               progress_desc=name, progress_show=show),
        eval_fn=eval_fn, max_checkpoints=cfg.max_checkpoints,
        plot=(_PHASE_PLOTS[name], 'training.png', name))
    return state

  # 1. MLE pretraining.
  pre = cfg.pretrain
  pre_tx = adam(pre.learning_rate, pre.max_grad_norm)
  gen_params = lstm.init_params(gen_cfg, keys['generator'])
  mle_step = functools.partial(mle_epoch, env=env, tx=pre_tx,
                               batch_size=pre.batch_size)
  pretrained = run_phase(
      'pretrain', TrainState.create(gen_params, pre_tx), step_fn=mle_step,
      batch={'data': data}, total_steps=pre.epochs, eval_fn=evaluate,
      show=('nll',))

  # 2. Discriminator pretraining against the pretrained generator.
  d = cfg.discriminator
  d_tx = adam(d.learning_rate)
  round_kwargs = dict(env=env, tx=d_tx, batch_size=d.batch_size,
                      l2_reg=d.l2_reg, sample_chunk=ev.chunk)
  d_params = disc_lib.init_params(disc_cfg, keys['discriminator'])
  dp = cfg.discriminator_pretrain
  d_pretrained = run_phase(
      'discriminator', TrainState.create(d_params, d_tx),
      step_fn=functools.partial(discriminator_pretrain_step, model=disc_model,
                                num_negatives=dp.num_negatives,
                                epochs=dp.epochs, **round_kwargs),
      batch={'data': data, 'generator': pretrained.params},
      total_steps=dp.rounds, show=('discriminator/accuracy',))

  # 3. The three methods, each from its own copy of the pretrained generator.
  adv, bleu_cfg = cfg.adversarial, cfg.pg_bleu
  bleu_tx = adam(bleu_cfg.learning_rate, adv.max_grad_norm)
  gan_tx = adam(adv.learning_rate, adv.max_grad_norm)
  generator_kwargs = dict(env=env, rollouts_per_scan=adv.rollouts_per_scan,
                          batch_size=adv.batch_size,
                          update_rate=adv.rollout_update_rate)

  def start(opt_state, **algo_state):
    return TrainState(step=jnp.zeros((), jnp.int32),
                      params=_copy(pretrained.params), opt_state=opt_state,
                      algo_state=algo_state)

  references = bleu_lib.build_references(jax.device_get(data),
                                         max_order=bleu_cfg.max_order)
  methods = {
      # MLE continues pretraining, optimizer state included.
      'mle': dict(state=start(_copy(pretrained.opt_state)), step_fn=mle_step,
                  batch={'data': data}, show=('nll',)),
      'pg_bleu': dict(
          state=start(bleu_tx.init(pretrained.params),
                      rollout_params=_copy(pretrained.params)),
          step_fn=functools.partial(
              pg_bleu_epoch, smooth_epsilon=bleu_cfg.smooth_epsilon,
              tx=bleu_tx, num_rollouts=bleu_cfg.num_rollouts,
              **generator_kwargs),
          batch={'data': data, 'references': references},
          show=('reward/mean',)),
      'seqgan': dict(
          state=start(gan_tx.init(pretrained.params),
                      rollout_params=_copy(pretrained.params),
                      discriminator={
                          'params': _copy(d_pretrained.params),
                          'opt_state': _copy(d_pretrained.opt_state)}),
          step_fn=functools.partial(
              seqgan_epoch, model=disc_model, score_model=score_model,
              score_chunk=d.score_chunk, rounds=adv.discriminator_rounds,
              round_kwargs=dict(num_negatives=adv.num_negatives,
                                epochs=adv.discriminator_epochs,
                                **round_kwargs),
              tx=gan_tx, num_rollouts=adv.num_rollouts, **generator_kwargs),
          batch={'data': data},
          show=('reward/mean', 'discriminator/accuracy')),
  }
  for name, method in methods.items():
    run_phase(name, **method, total_steps=adv.epochs,
              eval_fn=functools.partial(evaluate, offset=pre.epochs))

  records = {name: writers.read_metrics(str(workdir / name))
             for name in PHASES}
  summary = summarize(records, reference, time.time() - start_time)
  if parallel.is_primary():
    plot_nll_oracle(records, pre.epochs, str(workdir / 'nll_oracle.png'),
                    reference=reference[f'{NLL_KEY}/oracle_data'])
    writers.write_summary(str(workdir), summary)
  return summary


def _curve(records, offset: int = 0):
  return [(r['step'] + offset, r[NLL_KEY]) for r in records if NLL_KEY in r]


def training_seconds(records: list[dict]) -> float:
  """Seconds of training that a phase's logged records cover.

  `loop.fit` logs `step_time` as the mean over the steps since the previous
  logged record, so each counts that many steps.
  """
  total, previous = 0.0, 0
  for record in records:
    if 'step_time' in record:
      total += record['step_time'] * max(record['step'] - previous, 0)
      previous = record['step']
  return total


def summarize(records: dict[str, list[dict]], reference: dict,
              wall_time: float) -> dict:
  """NLL-oracle of every method, the reference points, and final metrics.

  `wall_time_s` is this invocation's; `step_time_s/PHASE` sums the logged
  step times of a phase over every invocation that trained it (so it stays
  right for a resumed run; evaluations are not included).
  """
  summary = {'wall_time_s': wall_time, **reference}
  for phase, phase_records in records.items():
    if any('step_time' in r for r in phase_records):
      summary[f'step_time_s/{phase}'] = training_seconds(phase_records)
  pretrain = _curve(records['pretrain'])
  if pretrain:
    if pretrain[0][0] == 0:
      summary[f'{NLL_KEY}/random_init'] = pretrain[0][1]
    summary[f'{NLL_KEY}/pretrained'] = pretrain[-1][1]
  for method in METHODS:
    curve = _curve(records[method])
    if curve:
      summary[f'{NLL_KEY}/{method}'] = curve[-1][1]
      summary[f'{NLL_KEY}_best/{method}'] = min(v for _, v in curve)
    trained = [r for r in records[method] if NLL_KEY not in r]
    if trained:
      summary.update({f'final/{method}/{k}': v for k, v in trained[-1].items()
                      if k != 'step'})
  discriminator = records['discriminator']
  if discriminator:
    summary['final/discriminator_pretrain/accuracy'] = discriminator[-1].get(
        'discriminator/accuracy')
  nll = [summary.get(f'{NLL_KEY}/{m}') for m in ('seqgan', 'pg_bleu', 'mle')]
  if None not in nll:
    summary['ordering_reproduced'] = bool(nll[0] < nll[1] < nll[2])
  return summary


def plot_nll_oracle(records: dict[str, list[dict]], pretrain_epochs: int,
                    path: str, *, reference: float | None = None) -> None:
  """NLL-oracle against epoch: the shared pretraining curve, then each
  method's, with the start of adversarial training marked; the right panel
  zooms on the methods (the random init's NLL dwarfs their differences)."""
  plt = plots.plt
  labels = {'mle': 'MLE', 'pg_bleu': 'PG-BLEU', 'seqgan': 'SeqGAN'}
  colors = {'mle': 'tab:blue', 'pg_bleu': 'tab:orange', 'seqgan': 'tab:green'}
  pretrain = _curve(records['pretrain'])
  curves = {m: _curve(records[m], offset=pretrain_epochs) for m in METHODS}
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  try:
    for ax in axes:
      if pretrain:
        ax.plot(*zip(*pretrain), color='black', linewidth=1.2,
                label='MLE pretraining')
      for method, curve in curves.items():
        if curve:
          ax.plot(*zip(*curve), color=colors[method], linewidth=1.4,
                  label=labels[method])
      ax.axvline(pretrain_epochs, color='gray', linestyle='--', linewidth=0.8)
      ax.set_xlabel('epoch')
      ax.grid(True, alpha=0.3)
    axes[0].set_ylabel('NLL-oracle (nats / token)')
    title = 'SeqGAN synthetic oracle'
    if reference is not None:
      title += f' (oracle samples: {reference:.3f})'
    axes[0].set_title(title)
    axes[0].legend()
    zoomed = [v for c in curves.values() for _, v in c]
    if zoomed:
      last = max(x for c in curves.values() for x, _ in c)
      lo, hi = min(zoomed), max(zoomed)
      pad = 0.1 * (hi - lo) + 1e-3
      axes[1].set_xlim(pretrain_epochs - 0.2 * (last - pretrain_epochs),
                       last + 1)
      axes[1].set_ylim(lo - pad, hi + pad)
    axes[1].set_title('adversarial phase')
    fig.tight_layout()
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with epath.Path(path).open('wb') as f:
      fig.savefig(f, format='png', dpi=100)
  finally:
    plt.close(fig)
