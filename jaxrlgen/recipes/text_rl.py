"""RL fine-tuning of a language model on a prompt/answer task, end to end.

  1. Supervised warm start (maximum likelihood on the task's completions),
     its own run under `workdir/sft/` (skipped when `config.sft.steps` is 0
     or its final checkpoint exists).
  2. RL with the algorithm `config.algo.name` against `config.reward`, under
     `workdir/`: metrics.jsonl, tensorboard/, checkpoints/, summary.json and
     training.png. A run restarted with the same workdir resumes.

Held-out accuracy is the exact-match rate of greedy completions; it is
evaluated before RL (`eval/accuracy` at step 0), every `eval.every` steps and
at the end.
"""

import contextlib
import dataclasses
import functools
import time

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxrlgen import algos
from jaxrlgen.algos import base as algo_base
from jaxrlgen import parallel
from jaxrlgen import rewards
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.data import arithmetic
from jaxrlgen.data import pipeline
from jaxrlgen.data import scored
from jaxrlgen.data.hf_tokenizer import HFTokenizer
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.envs import search
from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm
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


def validate(config: ml_collections.ConfigDict, tokenizer: ByteTokenizer,
             model_cfg: tfm.TransformerConfig, mesh: jax.sharding.Mesh) -> None:
  """Checks the config before anything is computed; errors name the field."""
  if config.loop not in ('sync', 'async'):
    raise ValueError(f"config.loop={config.loop!r}; known: 'sync', 'async'.")
  if config.loop == 'async' and jax.process_count() > 1:
    raise ValueError("config.loop='async' runs on one host; use "
                     "config.loop='sync' for a multi-host run.")
  if config.rl.reference_dtype not in REFERENCE_DTYPES:
    raise ValueError(f'config.rl.reference_dtype={config.rl.reference_dtype!r};'
                     f' known: {REFERENCE_DTYPES}.')
  rl = config.rl
  for name, value in (('total_steps', config.total_steps),
                      ('rl.batch_size', rl.batch_size),
                      ('rl.group_size', rl.group_size),
                      ('rl.max_new_tokens', rl.max_new_tokens)):
    if value < (0 if name == 'total_steps' else 1):
      raise ValueError(f'config.{name}={value} must be positive.')
  if rl.batch_size % rl.group_size:
    raise ValueError(
        f'config.rl.batch_size={rl.batch_size} (sequences per step) must be '
        f'divisible by config.rl.group_size={rl.group_size}.')
  algo_base.check_env(algos.make(config.algo), TextEnv)
  # Every batch is split over data x fsdp, and read in equal shares by the
  # processes.
  shards = max(parallel.batch_size_divisor(mesh), jax.process_count())
  prompts = rl.batch_size // rl.group_size
  if prompts % shards:
    raise ValueError(
        f'config.rl.batch_size / config.rl.group_size = {prompts} prompts per '
        f'step must be divisible by the {shards} batch shards (mesh data x '
        f'fsdp = {parallel.batch_size_divisor(mesh)}, '
        f'{jax.process_count()} processes).')
  for name in ('sft.batch_size', 'eval.batch_size'):
    value = config[name.split('.')[0]][name.split('.')[1]]
    if value % shards:
      raise ValueError(f'config.{name}={value} must be divisible by the '
                       f'{shards} batch shards (mesh data x fsdp, processes).')
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise ValueError(
        f'The tokenizer has {tokenizer.vocab_size} tokens but '
        f'config.model.vocab_size={model_cfg.vocab_size}; raise '
        'config.model.vocab_size.')
  for name, need in (
      ('rl.max_new_tokens', config.data.max_prompt_len + rl.max_new_tokens),
      ('data.max_target_len',
       config.data.max_prompt_len + config.data.max_target_len)):
    if need > model_cfg.max_seq_len:
      raise ValueError(
          f'config.data.max_prompt_len + config.{name} = {need} tokens do not '
          f'fit the KV cache of config.model.max_seq_len='
          f'{model_cfg.max_seq_len}; shorten them or raise model.max_seq_len.')
  validate_offline(config, shards)


SOURCES = ('online', 'offline')


def validate_offline(config: ml_collections.ConfigDict, shards: int) -> None:
  """Checks `config.rl.source` and, for 'offline', `config.offline`."""
  source = config.rl.get('source', 'online')
  if source not in SOURCES:
    raise ValueError(f'config.rl.source={source!r}; known: {SOURCES}.')
  if source == 'online':
    return
  if config.loop != 'sync' or jax.process_count() > 1:
    raise ValueError("config.rl.source='offline' runs with config.loop='sync'"
                     ' on one process.')
  if config.rl.get('sampler', 'policy') != 'policy':
    raise ValueError("config.rl.source='offline' samples nothing: leave "
                     "config.rl.sampler='policy'.")
  off = config.get('offline')
  if off is None:
    raise ValueError("config.rl.source='offline' needs a config.offline "
                     'section (see experiments/configs/arithmetic_base.py).')
  for name in ('num_prompts', 'samples_per_prompt', 'chunk_prompts'):
    if off[name] < 1:
      raise ValueError(f'config.offline.{name}={off[name]} must be positive.')
  if off.temperature <= 0:
    raise ValueError(f'config.offline.temperature={off.temperature} must be '
                     '> 0.')
  g = off.samples_per_prompt
  if config.rl.batch_size % g:
    raise ValueError(f'config.rl.batch_size={config.rl.batch_size} (sequences '
                     'per step) must be divisible by '
                     f'config.offline.samples_per_prompt={g}.')
  prompts = config.rl.batch_size // g
  if prompts % shards:
    raise ValueError(f'config.rl.batch_size / config.offline.samples_per_prompt'
                     f' = {prompts} prompts per step must be divisible by the '
                     f'{shards} batch shards.')
  if not prompts <= off.num_prompts <= config.data.num_train:
    raise ValueError(f'config.offline.num_prompts={off.num_prompts} must be '
                     f'between the {prompts} prompts of a step and '
                     f'config.data.num_train={config.data.num_train}.')
  if off.num_prompts % off.chunk_prompts:
    raise ValueError(f'config.offline.num_prompts={off.num_prompts} must be a '
                     'multiple of config.offline.chunk_prompts='
                     f'{off.chunk_prompts}.')


def offline_dataset(config, workdir, task, env: TextEnv, reward_fn, params):
  """The run's offline dataset of scored sequences (`jaxrlgen.data.scored`).

  Sampled once from `params` (the warm-started policy) at
  `config.offline.temperature` and kept in WORKDIR/offline_dataset.npz, so a
  resumed run trains on the same data; deterministic in `config.seed`.
  """
  path = workdir / 'offline_dataset.npz'
  if path.exists():
    with np.load(path) as stored:
      return dict(stored)
  off = config.offline
  index = pipeline.batch_indices(len(task.train), off.num_prompts, 0,
                                 config.seed + 3)
  prompts = _rl_fields(task.collate(pipeline.get_batch(task.train, index)))
  behaviour = dataclasses.replace(
      env, sampling=Sampling(temperature=off.temperature),
      num_samples=off.samples_per_prompt)
  dataset = scored.generate(
      params, prompts, jax.random.fold_in(jax.random.key(config.seed), 3),
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
  """The data side of a run: splits, batching and collation."""

  train: object
  test: object
  tokenizer: ByteTokenizer
  max_prompt_len: int
  max_target_len: int
  seed: int

  def batch(self, step: int, batch_size: int, stream: int = 0):
    """The host's share of the training batch of `step` (numpy arrays)."""
    idx = pipeline.batch_indices(
        len(self.train), batch_size, step, self.seed + stream,
        jax.process_index(), jax.process_count())
    return self.collate(pipeline.get_batch(self.train, idx))

  def collate(self, records):
    return pipeline.collate_arithmetic(records, self.tokenizer,
                                       self.max_prompt_len, self.max_target_len)

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


def load_task(config: ml_collections.ConfigDict, workdir, tokenizer) -> Task:
  data = config.data
  data_dir = data.data_dir or str(workdir / 'data')
  load = functools.partial(arithmetic.load_arithmetic, data_dir,
                           data.max_operand, data.num_train, data.num_test,
                           seed=data.seed)
  # Process 0 writes the dataset (once); the others read it when it is done.
  if parallel.is_primary():
    splits = load()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('jaxrlgen: dataset prepared')
  if not parallel.is_primary():
    splits = load()
  return Task(splits['train'], splits['test'], tokenizer, data.max_prompt_len,
              data.max_target_len, seed=config.seed)


def _rl_fields(batch):
  return {k: batch[k] for k in ('prompt', 'prompt_mask', 'answer')}


def make_evaluator(env: TextEnv, reward_fn, batches, policy_params,
                   layout: parallel.Layout | None = None, *, decode=None,
                   prefix: str = ''):
  """state -> {'eval/accuracy', 'eval/mean_length'} over greedy completions.

  `batches` are this process's shares of the evaluation batches; sums are
  reduced on the devices, so every process gets the global figures.
  `decode` ((params, batch) -> (rewards f32[N], rollout); default: greedy
  decoding of `env`) and `prefix` (of the metric names, e.g. 'mcts_') give
  the same figures for another decoder.
  """
  decode = decode or functools.partial(
      step_lib.greedy_eval_step, env=env.greedy(), reward_fn=reward_fn)

  def sums(params, batch):
    reward, rollout = decode(params, batch)
    return jnp.sum(reward), jnp.sum(rollout.mask), reward.shape[0]

  layout = layout or default_layout(env.model.config)
  eval_step = jax.jit(sums, out_shardings=parallel.replicated(layout.mesh))
  batches = [layout.batch(_rl_fields(b)) for b in batches]

  def evaluate(state) -> dict[str, float]:
    totals = np.zeros(3)
    for batch in batches:
      totals += np.array(jax.device_get(
          eval_step(policy_params(state.params), batch)), np.float64)
    correct, length, count = totals
    return {f'eval/{prefix}accuracy': float(correct / count),
            f'eval/{prefix}mean_length': float(length / count)}

  return evaluate


SAMPLERS = ('policy', 'mcts')


def mcts_sampler(config, env: TextEnv) -> search.MCTSSampler | None:
  """The MCTS sampler of `config.rl.sampler='mcts'` (`config.mcts`), or None."""
  sampler = config.rl.get('sampler', 'policy')
  if sampler not in SAMPLERS:
    raise ValueError(f'config.rl.sampler={sampler!r}; known: {SAMPLERS}.')
  if sampler == 'policy':
    if config.algo.name == 'mcts_expert_iteration':
      raise ValueError("config.algo.name='mcts_expert_iteration' distils MCTS "
                       "rollouts: set config.rl.sampler='mcts'.")
    return None
  if config.loop != 'sync':
    raise ValueError("config.rl.sampler='mcts' needs config.loop='sync'.")
  return search.MCTSSampler(
      env, search.MCTSConfig.from_config(config.get('mcts', {})))


def mcts_rl_step(state, batch, key, *, sampler, env, reward_fn, algo, tx):
  """`step_lib.rl_step` with rollouts decoded by MCTS."""
  rollout, rewards = search.actor_step(algo.policy_params(state.params),
                                       batch, key, sampler=sampler,
                                       reward_fn=reward_fn)
  return step_lib.learner_step(state, rollout, rewards, batch, key, env=env,
                               reward_fn=reward_fn, algo=algo, tx=tx)


def with_mcts_eval(evaluate, sampler: search.MCTSSampler, env: TextEnv,
                   reward_fn, batches, policy_params, layout: parallel.Layout):
  """`evaluate` plus `eval/mcts_accuracy` and `eval/mcts_mean_length`: the
  same held-out examples decoded by noise-free MCTS with the same policy."""
  mcts = make_evaluator(
      env, reward_fn, batches, policy_params, layout, prefix='mcts_',
      decode=functools.partial(search.greedy_eval_step, sampler=sampler,
                               reward_fn=reward_fn))
  return lambda state: {**evaluate(state), **mcts(state)}


def _hf_overrides(model: ml_collections.ConfigDict) -> dict:
  # The fields of an HF config's `model` section beside `path`.
  return {k: v for k, v in model.items() if k != 'path'}


def model_and_tokenizer(model: ml_collections.ConfigDict):
  """(tokenizer, TransformerConfig) of `config.model`.

  With `model.path`, a Hugging Face checkpoint directory: its config.json and
  tokenizer, with the section's other fields (max_seq_len, param_dtype,
  dtype, remat, ...) overriding; otherwise the byte tokenizer and a fresh
  model of the section's TransformerConfig fields.
  """
  if model.get('path'):
    return (HFTokenizer.from_dir(model.path),
            hf.model_config(hf.read_config(model.path),
                            **_hf_overrides(model)))
  return ByteTokenizer(), tfm.TransformerConfig(**model)


def default_layout(model_cfg: tfm.TransformerConfig) -> parallel.Layout:
  """Every device on `data`, with the logical names of `model_cfg`'s params."""
  return parallel.Layout(parallel.make_mesh(), model_logical_axes(model_cfg))


def model_logical_axes(model_cfg: tfm.TransformerConfig):
  # With the value head's names too: PPO's critic is the model with one.
  return tfm.logical_axes(dataclasses.replace(model_cfg, value_head=True))


def warm_start(config, workdir, task: Task, env: TextEnv, params,
               layout: parallel.Layout | None = None):
  """Supervised warm start as its own run under `workdir/sft`; its params."""
  layout = layout or default_layout(env.model.config)
  sft = config.sft
  tx = optim.make(sft.optimizer, sft.steps)
  state = layout.init(
      lambda p: TrainState.create(p, tx), params)
  step_fn = layout.jit_step(
      functools.partial(step_lib.sft_step, env=env, tx=tx), state)
  state, _ = loop.run_stage(
      workdir / 'sft', state, step_fn=step_fn,
      batch_fn=lambda s: layout.batch(task.batch(s, sft.batch_size,
                                                 stream=1)),
      key=jax.random.key(config.seed + 1),
      config=loop.LoopConfig(total_steps=sft.steps, log_every=sft.log_every,
                             checkpoint_every=sft.steps,
                             progress_desc='sft', progress_show=('nll',)),
      plot=(('nll', 'entropy'), 'sft.png', 'Supervised warm start'))
  return state.params


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the whole experiment; returns the summary."""
  start_time = time.time()
  workdir = workdir_lib.prepare_workdir(workdir)
  tokenizer, model_cfg = model_and_tokenizer(config.model)
  mesh = parallel.make_mesh(config.mesh)
  validate(config, tokenizer, model_cfg, mesh)
  # The async loop places its actor and learner on device groups of its own;
  # the sync loop's activations follow the mesh.
  context = (parallel.activate(mesh) if config.loop == 'sync'
             else contextlib.nullcontext())
  with context:
    return _run(config, workdir, tokenizer, model_cfg,
                parallel.Layout(mesh, model_logical_axes(model_cfg)),
                start_time)


def _run(config, workdir, tokenizer, model_cfg, layout: parallel.Layout,
         start_time: float) -> dict:
  algo = algos.make(config.algo)
  reward_fn = rewards.make(config.reward.terms, tokenizer,
                           target_length=config.reward.target_length)
  model = tfm.Transformer(model_cfg)
  sampling = Sampling(temperature=config.rl.temperature, top_k=config.rl.top_k,
                      top_p=config.rl.top_p, method=config.rl.sampling_method)
  env = TextEnv(model, max_new_tokens=config.rl.max_new_tokens,
                sampling=sampling, eos_id=tokenizer.eos_id,
                pad_id=tokenizer.pad_id, num_samples=config.rl.group_size,
                logprob_chunk=config.rl.logprob_chunk,
                cache_segments=config.rl.cache_segments)
  num_prompts = config.rl.batch_size // config.rl.group_size
  _check_reward_shape(reward_fn, env, num_prompts, config)
  sampler = mcts_sampler(config, env)  # None unless config.rl.sampler='mcts'.

  task = load_task(config, workdir, tokenizer)
  init_key = jax.random.key(config.seed)
  if config.model.get('path'):  # A released model, placed in its shards.
    _, params = hf.load(config.model.path, shardings=layout.shardings,
                        **_hf_overrides(config.model))
  else:
    params = layout.init(functools.partial(tfm.init_params, model_cfg),
                         init_key)
  if config.sft.steps:
    sft_env = dataclasses.replace(env, sampling=Sampling(), num_samples=1)
    params = warm_start(config, workdir, task, sft_env, params, layout)

  tx = optim.make(config.rl.optimizer, config.total_steps)
  ref_dtype = jnp.dtype(config.rl.reference_dtype)

  def build_state(params):
    ref_params = (jax.tree.map(lambda x: x.astype(ref_dtype), params)
                  if algo.uses_reference else None)
    params = algo.init_params(env, params, jax.random.fold_in(init_key, 1))
    return TrainState.create(
        params, tx, ref_params=ref_params,
        algo_state=algo_base.init_algo_state(
            algo, params, rollout=_rollout_spec(
                config.rl.batch_size, config.data.max_prompt_len,
                env.max_new_tokens)))

  offline = None  # config.rl.source='offline': the dataset, sampled once.
  if config.rl.get('source', 'online') == 'offline':
    offline = offline_dataset(config, workdir, task, env, reward_fn, params)
  state = layout.init(build_state, params)
  del params
  if parallel.is_primary():
    print(memory_report(state, env, num_prompts, config, layout), flush=True)
  checkpointer = checkpoint_lib.Checkpointer(str(workdir / 'checkpoints'),
                                             max_to_keep=config.max_checkpoints)
  # Restored arrays take the shardings of `state`'s: a checkpoint written on
  # one mesh restores onto another.
  state, resume_step = checkpointer.restore_or(state)
  step_kwargs = dict(env=env, reward_fn=reward_fn, algo=algo, tx=tx)
  batch_fn = lambda s: layout.batch(_rl_fields(task.batch(s, num_prompts)))
  if offline is not None:  # The learner step alone, on the stored samples.
    g = config.offline.samples_per_prompt
    step = functools.partial(step_lib.offline_step, **{
        **step_kwargs, 'env': dataclasses.replace(env, num_samples=g)})
    batch_fn = lambda s: layout.batch(offline_batch(
        offline, s, config.rl.batch_size // g, config.seed))
  elif sampler is not None:  # Searches decode; the learner step is the same.
    step = functools.partial(mcts_rl_step, sampler=sampler, **step_kwargs)
  else:
    step = functools.partial(step_lib.rl_step, **step_kwargs)
  fit = functools.partial(loop.fit, step_fn=layout.jit_step(step, state))
  if config.loop == 'async':  # The actor lags the learner (IMPALA).
    fit = functools.partial(
        async_loop.fit, max_staleness=config.algo.get('max_staleness', 1),
        steps=async_loop.rl_actor_learner(env, reward_fn, algo, tx))
    batch_fn = lambda s: _rl_fields(task.batch(s, num_prompts))
  env = algo.decoding_env(env)  # Held-out decoding: the algorithm's policy.
  evaluate = make_evaluator(env, reward_fn, task.eval_batches(
      config.eval.num_examples, config.eval.batch_size), algo.policy_params,
                            layout)
  if sampler is not None:
    evaluate = with_mcts_eval(
        evaluate, sampler, env, reward_fn, task.eval_batches(
            config.eval.num_examples, config.eval.batch_size),
        algo.policy_params, layout)
  with writers.MetricWriter(str(workdir), resume_step=resume_step) as writer:
    state = fit(
        state,
        batch_fn=batch_fn,
        key=jax.random.fold_in(jax.random.key(config.seed), 2),
        config=loop.LoopConfig(total_steps=config.total_steps,
                               log_every=config.log_every,
                               eval_every=config.eval.every,
                               checkpoint_every=config.checkpoint_every,
                               progress_desc=config.algo.name),
        checkpointer=checkpointer, writer=writer, eval_fn=evaluate)
  checkpointer.close()
  if config.model.get('path'):  # The trained policy, for other tools to serve.
    export = str(workdir / 'hf_model')
    hf.save(export, model_cfg, algo.policy_params(state.params),
            hf_config=hf.read_config(config.model.path))
    if parallel.is_primary():
      hf.copy_tokenizer(config.model.path, export)
  summary = writers.summarize(writers.read_metrics(str(workdir)),
                              time.time() - start_time, ('accuracy',))
  summary['mesh'] = dict(layout.mesh.shape)
  summary['num_processes'] = jax.process_count()
  if offline is not None:
    summary.update(scored.summary(offline))
  if parallel.is_primary():
    plots.plot_metrics(writers.read_metrics(str(workdir)), PLOT_KEYS,
                       str(workdir / 'training.png'),
                       title=f'{config.algo.name} on arithmetic')
    writers.write_summary(str(workdir), summary)
  return summary


def memory_report(state: TrainState, env: TextEnv, num_prompts: int, config,
                  layout: parallel.Layout) -> str:
  """Bytes per device of parameters, optimizer state, reference model and
  the rollout's KV cache, on the run's mesh."""
  model_cfg = env.model.config
  cache = jax.eval_shape(functools.partial(
      tfm.init_cache, model_cfg, num_prompts * env.num_samples,
      config.data.max_prompt_len + env.max_new_tokens))
  sizes = dict(layout.mesh.shape)
  kv_names = ('batch', 'act_kv_heads', 'length', None)

  def place(x):
    names = kv_names if x.ndim == 4 else ('batch', None)[:x.ndim]
    spec = parallel.spec_for(names, x.shape, sizes)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=(
        jax.sharding.NamedSharding(layout.mesh, spec)))

  return parallel.memory_report({
      'parameters': state.params,
      'optimizer state': state.opt_state,
      'reference model': state.ref_params,
      'KV cache (rollout)': jax.tree.map(place, cache),
  }) + f'\n  on mesh {sizes} of {jax.process_count()} process(es)'


def _rollout_spec(batch_size: int, prompt_len: int, num_steps: int) -> Rollout:
  """The shapes of a text rollout, as jax.ShapeDtypeStructs."""
  spec = jax.ShapeDtypeStruct
  return Rollout(context={'tokens': spec((batch_size, prompt_len), jnp.int32),
                          'mask': spec((batch_size, prompt_len), jnp.bool_)},
                 actions=spec((batch_size, num_steps), jnp.int32),
                 logp=spec((batch_size, num_steps), jnp.float32),
                 mask=spec((batch_size, num_steps), jnp.bool_))


def _check_reward_shape(reward_fn, env: TextEnv, num_prompts: int, config):
  b, t, p = num_prompts * env.num_samples, env.max_new_tokens, \
      config.data.max_prompt_len
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
  rollout = Rollout(context={'tokens': spec((b, p), jnp.int32),
                             'mask': spec((b, p), jnp.bool_)},
                    actions=spec((b, t), jnp.int32),
                    logp=spec((b, t), jnp.float32), mask=spec((b, t), jnp.bool_))
  step_lib.check_reward(reward_fn, rollout,
                        {'prompt': spec((b, p), jnp.int32),
                         'prompt_mask': spec((b, p), jnp.bool_),
                         'answer': spec((b,), jnp.int32)})
