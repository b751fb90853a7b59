"""RL fine-tuning of a class-conditional diffusion model on the digits, end to end.

  1. Reward classifier: a small CNN trained on the `heldout` digits (which
     the denoiser never sees), its own run under `workdir/classifier/`;
     its accuracy on the `train` digits is reported.
  2. Denoiser pretraining with DDPM's objective on the `train` digits, with
     an exponential moving average of the parameters (the EMA is the
     pretrained model), its own run under `workdir/pretrain/`.
  3. RL (`config.algo.name`: ddpo_sf, ddpo_is, dpok, or any algorithm that
     needs no critic) against `config.reward.terms`, under `workdir/`:
     metrics.jsonl, tensorboard/, checkpoints/, summary.json, training.png,
     samples_before.png and samples_after.png.

Each stage resumes from its checkpoint, so a run restarted with the same
workdir picks up where it stopped. Evaluation denoises a fixed set of
`eval.samples_per_class` samples of every class from fixed noise, before RL
(step 0), every `eval.every` steps and at the end: `eval/reward` is the mean
reward, `eval/class_accuracy` the fraction the classifier assigns to the
requested class.
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.ddpo_digits import config as config_lib
from jaxrlgen import algos
from jaxrlgen import parallel
from jaxrlgen.algos import base
from jaxrlgen.policies import lora
from jaxrlgen.core.types import TrainState
from jaxrlgen.data import digits
from jaxrlgen.data import pipeline
from jaxrlgen.envs import diffusion
from jaxrlgen.models import classifier as classifier_lib
from jaxrlgen.models import unet as unet_lib
from jaxrlgen.policies import DenoiserPolicy
from jaxrlgen.rewards import image as image_rewards
from jaxrlgen.train import loop
from jaxrlgen.train import optim
from jaxrlgen.train import plots
from jaxrlgen.train import step as step_lib
from jaxrlgen.train import workdir as workdir_lib
from jaxrlgen.train import writers

PLOT_KEYS = ('reward/mean', 'eval/reward', 'eval/class_accuracy', 'kl',
             'approx_kl', 'clip_ratio', 'grad_norm')


def make_env(env: config_lib.EnvConfig, model: unet_lib.UNetConfig,
             group_size: int) -> diffusion.DiffusionEnv:
  """The denoising MDP of `model`, `group_size` samples per condition."""
  return diffusion.DiffusionEnv(DenoiserPolicy(unet_lib.UNet(model)),
                                schedule=env.schedule(),
                                sampler=env.strategy(), num_samples=group_size)


def _stage(workdir, name: str, state, step_fn, batch_fn, key, *, steps: int,
           log_every: int, show: str, plot_keys, title: str):
  """A supervised stage as its own run under `workdir/name`; its last state."""
  state, _ = loop.run_stage(
      workdir / name, state, step_fn=step_fn, batch_fn=batch_fn, key=key,
      config=loop.LoopConfig(total_steps=steps, log_every=log_every,
                             checkpoint_every=steps, progress_desc=name,
                             progress_show=(show,)),
      max_checkpoints=1, plot=(plot_keys, f'{name}.png', title))
  return state


def shift_augment(images: jax.Array, key: jax.Array, max_shift: int
                  ) -> jax.Array:
  """Each image translated by up to `max_shift` pixels (zero = -1 padded)."""
  if not max_shift:
    return images
  b, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2,
                            (0, 0)), constant_values=-1.0)
  offsets = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)
  crop = lambda x, o: jax.lax.dynamic_slice(x, (o[0], o[1], 0),
                                            (h, w, x.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def classifier_step(state: TrainState, batch, key: jax.Array, *,
                    model: classifier_lib.Classifier,
                    tx: optax.GradientTransformation, max_shift: int):
  """One cross-entropy step on shifted images, with dropout."""
  shift_key, dropout_key = jax.random.split(key)
  images = shift_augment(batch['image'], shift_key, max_shift)

  def loss_fn(params):
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': dropout_key})
    return classifier_lib.cross_entropy_loss(logits, batch['label'])

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1,
                       params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state), metrics


def pretrain_step(state: TrainState, batch, key: jax.Array, *,
                  env: diffusion.DiffusionEnv,
                  tx: optax.GradientTransformation, label_dropout: float,
                  ema_decay: float):
  """One DDPM step; `algo_state['ema']` tracks the parameters' moving average."""
  loss_fn = functools.partial(env.denoising_loss, images=batch['image'],
                              labels=batch['label'], key=key,
                              label_dropout=label_dropout)
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optax.incremental_update(params, state.algo_state['ema'],
                                 1.0 - ema_decay)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       algo_state={'ema': ema}), {
                           **metrics, 'grad_norm': optax.tree.norm(grads)}


def _array_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                   seed: int):
  """step -> this host's share of a shuffled batch of the arrays."""
  def batch_fn(step: int):
    idx = pipeline.batch_indices(len(images), batch_size, step, seed,
                                 jax.process_index(), jax.process_count())
    return {'image': images[idx], 'label': labels[idx]}

  return batch_fn


def train_classifier(cfg: config_lib.ClassifierConfig, image_size: int,
                     seed: int, workdir, heldout, test):
  """Trains (or restores) the reward classifier; (model, params, accuracy).

  `heldout` and `test` are (images, labels) arrays; `accuracy` is measured on
  `test` (the denoiser's digits, unseen here).
  """
  model = classifier_lib.Classifier(cfg.model(image_size))
  key = jax.random.key(seed + 10)
  tx = optim.make(cfg.optimizer, cfg.steps)
  state = TrainState.create(classifier_lib.init_params(model.config, key), tx)
  step_fn = jax.jit(functools.partial(classifier_step, model=model, tx=tx,
                                      max_shift=cfg.max_shift),
                    donate_argnums=0)
  state = _stage(workdir, 'classifier', state, step_fn,
                 _array_batches(*heldout, cfg.batch_size, seed + 11),
                 jax.random.fold_in(key, 1), steps=cfg.steps,
                 log_every=cfg.log_every, show='accuracy',
                 plot_keys=('loss', 'accuracy'), title='Reward classifier')
  logits = jax.jit(lambda p, x: model.apply({'params': p}, x))(state.params,
                                                               test[0])
  accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == test[1]))
  return model, state.params, accuracy


def pretrain_denoiser(cfg: config_lib.PretrainConfig, seed: int, workdir,
                      env: diffusion.DiffusionEnv, train):
  """DDPM pretraining (or its restored result) on `train` (images, labels);
  the EMA parameters.

  Outside a scan XLA's native convolution is the fast one, so pretraining
  runs the denoiser with `im2col=False` (the parameters are the same).
  """
  env = dataclasses.replace(env, policy=DenoiserPolicy(unet_lib.UNet(
      dataclasses.replace(env.policy.config, im2col=False))))
  key = jax.random.key(seed + 20)
  params = env.policy.init_params(key)
  tx = optim.make(cfg.optimizer, cfg.steps)
  state = TrainState.create(params, tx,
                            algo_state={'ema': jax.tree.map(jnp.copy, params)})
  step_fn = jax.jit(functools.partial(pretrain_step, env=env, tx=tx,
                                      label_dropout=cfg.label_dropout,
                                      ema_decay=cfg.ema_decay),
                    donate_argnums=0)
  state = _stage(workdir, 'pretrain', state, step_fn,
                 _array_batches(*train, cfg.batch_size, seed + 21),
                 jax.random.fold_in(key, 1), steps=cfg.steps,
                 log_every=cfg.log_every, show='loss',
                 plot_keys=('loss', 'grad_norm'),
                 title='Denoiser pretraining (DDPM)')
  return state.algo_state['ema']


def eval_labels(samples_per_class: int) -> np.ndarray:
  """i32[10 * n]: every class n times, class-major (the grid's rows)."""
  return np.repeat(np.arange(digits.NUM_CLASSES, dtype=np.int32),
                   samples_per_class)


def make_sampler(env: diffusion.DiffusionEnv, reward_fn, classifier_model,
                 classifier_params):
  """jit(params, labels, key, frozen=None) -> (images, rewards, classifier's
  predictions); `frozen`: the base of a denoiser with adapters (the
  current state's: a step donates the one before)."""
  one_each = dataclasses.replace(env, num_samples=1)

  @jax.jit
  def sample(params, labels, key, frozen=None):
    rollout = base.bind(one_each, frozen).rollout(
        params, {'prompt': labels, 'prompt_mask': jnp.ones_like(labels, bool)},
        key)
    images = diffusion.final_images(rollout)
    rewards = reward_fn(rollout, {'prompt': labels,
                                  'prompt_mask': jnp.ones_like(labels, bool)})
    logits = classifier_model.apply({'params': classifier_params}, images)
    return images, rewards, jnp.argmax(logits, axis=-1)

  return sample


def make_evaluator(sample, cfg: config_lib.EvalConfig, seed: int,
                   policy_params, workdir):
  """state -> eval metrics on fixed labels and fixed noise.

  The evaluation before RL also draws `samples_before.png`; the last
  evaluation's images stay in `evaluate.images` for `samples_after.png`.
  """
  labels = eval_labels(cfg.samples_per_class)
  size = cfg.batch_size
  key = jax.random.key(seed + 30)

  def evaluate_params(params, frozen=None):
    images, rewards, predicted = [], [], []
    for i in range(0, len(labels), size):
      out = sample(params, labels[i:i + size], jax.random.fold_in(key, i),
                   frozen)
      for store, value in zip((images, rewards, predicted), out):
        store.append(np.asarray(value))
    images, rewards, predicted = map(np.concatenate,
                                     (images, rewards, predicted))
    metrics = {'eval/reward': float(np.mean(rewards)),
               'eval/reward_std': float(np.std(rewards)),
               'eval/class_accuracy': float(np.mean(predicted == labels))}
    return metrics, images

  def evaluate(state) -> dict[str, float]:
    metrics, evaluate.images = evaluate_params(policy_params(state.params),
                                               state.frozen)
    before = workdir / 'samples_before.png'
    if int(state.step) == 0 and not before.exists():
      save_grid(evaluate.images, before, columns=cfg.grid_columns,
                title='Pretrained denoiser')
    return metrics

  evaluate.images = None
  return evaluate


def save_grid(images: np.ndarray, path, *, columns: int, title: str) -> None:
  """A PNG of `columns` samples per class, one class per row.

  Args:
    images: f32[10 * n, H, W, 1] class-major (as `eval_labels`), in [-1, 1].
  """
  n = len(images) // digits.NUM_CLASSES
  columns = min(columns, n)
  h, w = images.shape[1:3]
  # Light grey lines between the samples (the digits' background is white).
  grid = np.full((digits.NUM_CLASSES * (h + 1) - 1, columns * (w + 1) - 1),
                 -0.7)
  for c in range(digits.NUM_CLASSES):
    for j in range(columns):
      grid[c * (h + 1):c * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = (
          images[c * n + j, ..., 0])
  fig, ax = plots.plt.subplots(
      figsize=(0.5 * columns + 1, 0.5 * digits.NUM_CLASSES + 0.8))
  try:
    ax.imshow(np.clip((grid + 1) / 2, 0, 1), cmap='gray_r', vmin=0, vmax=1,
              interpolation='nearest')
    ax.set_yticks([c * (h + 1) + h / 2 - 0.5
                   for c in range(digits.NUM_CLASSES)])
    ax.set_yticklabels([str(c) for c in range(digits.NUM_CLASSES)])
    ax.set_ylabel('requested class')
    ax.set_xticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
  finally:
    plots.plt.close(fig)


def make_batch_fn(rl: config_lib.RLConfig, seed: int):
  """step -> the step's conditions: `prompt` i32[N] classes (each class once
  per epoch of the 10, shuffled), `prompt_mask` all true."""
  n = rl.batch_size // rl.group_size

  def batch_fn(step: int):
    labels = pipeline.batch_indices(digits.NUM_CLASSES, n, step,
                                    seed + 40).astype(np.int32)
    return {'prompt': labels, 'prompt_mask': np.ones((n,), bool)}

  return batch_fn


def make_reward(cfg: config_lib.RewardConfig, classifier_model,
                classifier_params):
  """The weighted image rewards of `config.reward`: (rollout, batch) ->
  f32[B], with `uses_host` and `with_failures`."""
  return image_rewards.make(
      cfg.terms, classifier_model=classifier_model,
      classifier_params=classifier_params, jpeg_quality=cfg.jpeg_quality,
      levels=cfg.levels, host_penalty=cfg.host_penalty,
      host_workers=cfg.host_workers or None)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the whole experiment; returns the summary."""
  start_time = time.time()
  cfg = config_lib.parse(config)  # Every check, before anything is computed.
  algo = algos.make(cfg.algo)
  base.check_env(algo, diffusion.DiffusionEnv)
  workdir = workdir_lib.prepare_workdir(workdir)
  env = make_env(cfg.env, cfg.model.unet(cfg.data.image_size),
                 cfg.rl.group_size)

  timings = {}
  tick = time.time()
  splits = digits.load_digits(cfg.data.data_dir or str(workdir / 'data'),
                              cfg.data.heldout_per_class, cfg.data.seed)
  train = digits.to_arrays(splits['train'], cfg.data.image_size)
  heldout = digits.to_arrays(splits['heldout'], cfg.data.image_size)
  classifier_model, classifier_params, classifier_accuracy = train_classifier(
      cfg.classifier, cfg.data.image_size, cfg.seed, workdir, heldout, train)
  timings['time/classifier_s'] = time.time() - tick
  tick = time.time()
  pretrained = pretrain_denoiser(cfg.pretrain, cfg.seed, workdir, env, train)
  timings['time/pretrain_s'] = time.time() - tick
  tick = time.time()

  reward_fn = make_reward(cfg.reward, classifier_model, classifier_params)
  tx = optim.make(cfg.rl.optimizer, cfg.total_steps)
  frozen = None
  if cfg.lora.enabled:  # The pretrained U-Net becomes the frozen base.
    env = dataclasses.replace(env, policy=env.policy.with_adapters(cfg.lora))
    frozen = env.policy.quantize_base(pretrained)
    pretrained = env.policy.init_adapters(frozen, jax.random.key(
        cfg.seed + 51))
    reference = lora.adapters_off(pretrained)  # The bound base: no copy.
  else:
    reference = jax.tree.map(jnp.copy, pretrained)  # Not aliased: donated.
  params = algo.init_params(base.bind(env, frozen), pretrained,
                            jax.random.key(cfg.seed + 50))
  state = TrainState.create(
      params, tx, ref_params=reference if algo.uses_reference else None,
      algo_state=algos.init_algo_state(algo, params), frozen=frozen)
  # Jitted as every recipe's RL step is (`Layout.jit_step`): the U-Net
  # names no logical axes, so its parameters are replicated and the
  # conditions split over the mesh's data axes. With a host reward (the
  # image encoders), failed encodings are counted.
  layout = parallel.Layout(parallel.make_mesh(), {})
  step_fn = layout.jit_step(functools.partial(
      step_lib.rl_step, reward_fn=reward_fn, env=env, algo=algo, tx=tx), state)
  batch_fn = make_batch_fn(cfg.rl, cfg.seed)
  sample = make_sampler(env, reward_fn, classifier_model, classifier_params)
  evaluate = make_evaluator(sample, cfg.eval, cfg.seed, algo.policy_params,
                            workdir)
  name = cfg.algo.name
  state, _ = loop.run_stage(
      workdir, state, step_fn=step_fn,
      batch_fn=lambda step: layout.batch(batch_fn(step)),
      key=jax.random.key(cfg.seed + 60),
      config=loop.LoopConfig(total_steps=cfg.total_steps,
                             log_every=cfg.log_every,
                             eval_every=cfg.eval.every,
                             checkpoint_every=cfg.checkpoint_every,
                             progress_desc=name,
                             progress_show=('reward/mean',)),
      eval_fn=evaluate, max_checkpoints=cfg.max_checkpoints)
  after = workdir / 'samples_after.png'
  if evaluate.images is None and not after.exists():
    evaluate(state)  # Resumed with nothing left to run, and no grid yet.
  if evaluate.images is not None:
    save_grid(evaluate.images, after, columns=cfg.eval.grid_columns,
              title=f'After {cfg.total_steps} steps of {name}')
  timings['time/rl_s'] = time.time() - tick

  records = writers.read_metrics(str(workdir))
  plots.plot_metrics(records, PLOT_KEYS, str(workdir / 'training.png'),
                     title=f'{name} on digits, reward {reward_fn.__name__}')
  summary = writers.summarize(records, time.time() - start_time,
                              ('reward', 'class_accuracy'))
  summary.update(timings)
  summary['classifier/accuracy'] = classifier_accuracy
  if jax.process_index() == 0:
    writers.write_summary(str(workdir), summary)
  return summary
