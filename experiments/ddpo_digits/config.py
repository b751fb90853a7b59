"""DDPO / DPOK on scikit-learn's 8x8 digits: a class-conditional DDPM, then RL.

A reward classifier is trained on held-out digits, a small U-Net is
pretrained with DDPM's objective on the others, and RL fine-tunes the
denoiser against the reward, each denoising step an action:

  python -m experiments.main --config=experiments/ddpo_digits/config.py \
      --workdir=/tmp/ddpo_digits

The default maximises the classifier's log-probability of the requested
class with DDPO_IS. Variants after the file name, comma-separated in any
order, pick another reward, another algorithm and/or the smoke sizes:

  --config=experiments/ddpo_digits/config.py:png_compressibility
  --config=experiments/ddpo_digits/config.py:classifier,dpok
  --config=experiments/ddpo_digits/config.py:dpok,smoke

(rewards: jaxrlgen.rewards.image.NAMES; algorithms: ddpo_sf, ddpo_is,
dpok, and the group-relative grpo, dr_grpo and rloo, whose groups are the
`rl.group_size` samples of one class; smoke: every stage at tiny sizes,
about a minute on a CPU).
Restarting with the same --workdir resumes each stage.

Each section is a frozen dataclass below: its defaults are the experiment's,
its `__post_init__` its checks; `parse` reads a whole config into them
before anything is computed. `config.algo` is the algorithm's own schema
(`jaxrlgen.algos`).
"""

import dataclasses
from typing import Any, ClassVar

import ml_collections

from jaxrlgen import algos
from jaxrlgen import rewards
from jaxrlgen import schema
from jaxrlgen.data import digits
from jaxrlgen.envs import diffusion
from jaxrlgen.models import classifier as classifier_lib
from jaxrlgen.models import unet as unet_lib
from jaxrlgen.policies import lora as lora_lib
from jaxrlgen.rewards import image as image_rewards
from jaxrlgen.train import optim

ALGORITHMS = ('ddpo_sf', 'ddpo_is', 'dpok', 'grpo', 'dr_grpo', 'rloo')
SIZES = ('smoke',)


def _fraction(obj, name: str) -> None:
  """The field is in [0, 1)."""
  value = getattr(obj, name)
  if not 0 <= value < 1:
    raise schema.FieldError(name, f'={value} must be in [0, 1).')


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """`config.data`: the digits and their split."""

  SPECIAL: ClassVar[schema.Special] = {
      'seed': schema.Means(zero='a seed like any other')}

  data_dir: str = ''  # TFDS data_dir; '' means WORKDIR/data.
  heldout_per_class: int = 70  # Digits per class kept for the classifier only.
  seed: int = 0  # Seed of the train / held-out split.
  image_size: int = 8  # Side of the images; > 8 upsamples (bilinear).

  def __post_init__(self):
    schema.positive(self, 'heldout_per_class')
    schema.non_negative(self, 'seed')
    if self.image_size < digits.IMAGE_SIZE:
      raise schema.FieldError(
          'image_size', f'={self.image_size} must be >= {digits.IMAGE_SIZE}.')


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """`config.classifier`: the reward classifier and its training."""

  SPECIAL: ClassVar[schema.Special] = {
      'dropout': schema.Means(zero='no dropout'),
      'max_shift': schema.Means(zero='no augmentation')}

  features: tuple[int, ...] = (32, 64)  # CNN width per resolution level.
  dropout: float = 0.1  # Dropout before the linear layer.
  max_shift: int = 1  # Random translation augmentation, in pixels.
  steps: int = 1200  # Training steps on the held-out digits.
  batch_size: int = 64  # Images per step.
  log_every: int = 100  # Steps between log lines.
  optimizer: optim.OptimizerConfig = optim.OptimizerConfig(  # Adam(W).
      learning_rate=2e-3, schedule='cosine', warmup_steps=50)

  def __post_init__(self):
    schema.positive(self, 'steps', 'batch_size', 'log_every')
    schema.non_negative(self, 'max_shift')
    self.model(digits.IMAGE_SIZE)  # The model's own checks.

  def model(self, image_size: int) -> classifier_lib.ClassifierConfig:
    """The classifier's config at the data's size and classes."""
    return classifier_lib.ClassifierConfig(
        image_size=image_size, channels=1, features=self.features,
        num_classes=digits.NUM_CLASSES, dropout=self.dropout)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """`config.model`: the denoiser (size and classes come from the data)."""

  features: tuple[int, ...] = (32, 64)  # U-Net width per resolution level.
  num_res_blocks: int = 1  # Residual blocks per level and direction.
  embed_dim: int = 64  # Time / class embedding width.
  num_groups: int = 8  # GroupNorm groups.
  dtype: str = 'float32'  # Compute dtype.
  im2col: bool = True  # RL's convolutions as matmuls (fast on CPU in scans).

  def __post_init__(self):
    # The U-Net's own checks run in Config, at the data's image size.
    schema.positive(self, 'num_res_blocks', 'embed_dim', 'num_groups')

  def unet(self, image_size: int) -> unet_lib.UNetConfig:
    """The U-Net's config at the data's size and classes (checks included)."""
    return unet_lib.UNetConfig(image_size=image_size, channels=1,
                               num_classes=digits.NUM_CLASSES,
                               **dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """`config.pretrain`: DDPM pretraining of the denoiser."""

  SPECIAL: ClassVar[schema.Special] = {
      'label_dropout': schema.Means(
          zero='no unconditional model (env.guidance_scale must be 1)'),
      'ema_decay': schema.Means(zero='no average: the last weights')}

  steps: int = 1000  # DDPM steps on the train digits.
  batch_size: int = 64  # Images per step.
  label_dropout: float = 0.1  # Labels replaced by "no class" (for guidance).
  ema_decay: float = 0.995  # Weights' moving average: the pretrained model.
  log_every: int = 200  # Steps between log lines.
  optimizer: optim.OptimizerConfig = optim.OptimizerConfig(  # Adam(W).
      learning_rate=2e-3, schedule='cosine', warmup_steps=100)

  def __post_init__(self):
    schema.positive(self, 'steps', 'batch_size', 'log_every')
    _fraction(self, 'label_dropout')
    _fraction(self, 'ema_decay')


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """`config.env`: the forward process and the denoising MDP."""

  SPECIAL: ClassVar[schema.Special] = {
      'guidance_scale': schema.Means(zero='the unconditional model alone')}

  num_timesteps: int = 1000  # Training timesteps T of the forward process.
  beta_schedule: str = 'linear'  # linear | cosine.
  beta_start: float = 1e-4  # Linear schedule's first beta.
  beta_end: float = 0.02  # Linear schedule's last beta.
  sampler: str = 'ddim'  # ddim | ddpm (ancestral).
  num_steps: int = 20  # Denoising steps K: the MDP's horizon.
  eta: float = 1.0  # DDIM noise scale in (0, 1].
  guidance_scale: float = 1.0  # Classifier-free guidance weight; 1: none.
  clip_denoised: bool = True  # Clip the x0-prediction to [-1, 1].

  def __post_init__(self):
    # The library's frozen configs check their own fields (and name them).
    diffusion.levels(self.schedule(), self.strategy().num_steps)

  def schedule(self) -> diffusion.NoiseSchedule:
    """The forward process's noise schedule."""
    return diffusion.NoiseSchedule(
        num_timesteps=self.num_timesteps, beta_schedule=self.beta_schedule,
        beta_start=self.beta_start, beta_end=self.beta_end)

  def strategy(self) -> diffusion.Sampler:
    """How a sample is denoised (the MDP's step)."""
    return diffusion.Sampler(
        kind=self.sampler, num_steps=self.num_steps, eta=self.eta,
        guidance_scale=self.guidance_scale, clip_denoised=self.clip_denoised)


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """`config.rl`: the RL steps' batch and optimizer."""

  batch_size: int = 64  # Samples per RL step (conditions x group_size).
  group_size: int = 4  # Samples per condition (class) in a step.
  optimizer: optim.OptimizerConfig = optim.OptimizerConfig(  # Adam(W).
      learning_rate=1e-4)

  def __post_init__(self):
    schema.positive(self, 'batch_size', 'group_size')
    schema.divisible(self, 'batch_size', 'group_size')


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """`config.reward`: the weighted image rewards."""

  SPECIAL: ClassVar[schema.Special] = {
      'host_penalty': schema.Means(zero='a failed image scores 0',
                                   negative='a failed image scores this'),
      'host_workers': schema.Means(zero='one thread per image')}

  # (Image reward name, weight) pairs.
  terms: rewards.Terms = (('classifier', 1.0),)
  jpeg_quality: int = 95  # JPEG quality of the jpeg_* rewards.
  levels: int = 17  # Grey levels images are encoded at (the digits have 17).
  host_penalty: float = 0.0  # Reward of an image whose encoding failed.
  host_workers: int = 4  # Threads encoding images at once; 0: one per image.

  def __post_init__(self):
    schema.in_range(self, 'jpeg_quality', 1, 100)
    image_rewards.check_terms(self.terms)
    schema.in_range(self, 'levels', 2, 256)
    schema.non_negative(self, 'host_workers')


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`config.eval`: fixed-noise evaluation before, during and after RL."""

  SPECIAL: ClassVar[schema.Special] = {
      'every': schema.Means(zero='before and after RL only')}

  every: int = 20  # RL steps between evaluations.
  samples_per_class: int = 20  # Evaluation samples per class (fixed noise).
  batch_size: int = 100  # Samples per evaluation batch.
  grid_columns: int = 10  # Samples per class in the PNG grids.

  def __post_init__(self):
    schema.non_negative(self, 'every')
    schema.positive(self, 'samples_per_class', 'batch_size', 'grid_columns')
    num_eval = digits.NUM_CLASSES * self.samples_per_class
    if num_eval % self.batch_size:
      raise schema.FieldError(
          'batch_size', f'={self.batch_size} must divide the {num_eval} '
          f'evaluation samples ({digits.NUM_CLASSES} classes x '
          f'samples_per_class={self.samples_per_class}).')


def algo_config(name: str) -> ml_collections.ConfigDict:
  """`config.algo` of algorithm `name` for this experiment."""
  config = algos.default_config(name)
  config.timestep_fraction = 0.5  # Train on half the steps of a sample.
  if name in ('grpo', 'dr_grpo'):
    # DDPO_IS's four optimizer steps per batch of samples. No KL term, as in
    # DanceGRPO: GRPO's k3 estimate would exponentiate the log-ratio of two
    # 64-dimensional Gaussians (DPOK is the KL-regularised method here).
    config.update(num_minibatches=4, beta=0.0)
  return config


@dataclasses.dataclass(frozen=True)
class Config:
  """The whole config: the run's fields and its sections."""

  SPECIAL: ClassVar[schema.Special] = {
      'seed': schema.Means(zero='a seed like any other'),
      'total_steps': schema.Means(
          zero='no RL steps: pretraining and the evaluations only'),
      'checkpoint_every': schema.Means(zero='checkpoints at the end only')}

  recipe: str = 'experiments.ddpo_digits.recipe:run'  # The recipe that runs it.
  seed: int = 0  # Seeds inits, data order, noise and conditions.
  total_steps: int = 100  # RL steps.
  log_every: int = 1  # RL steps between metric fetches and log lines.
  checkpoint_every: int = 20  # RL steps between checkpoints (and the end).
  max_checkpoints: int = 2  # RL checkpoints kept.
  data: DataConfig = DataConfig()
  classifier: ClassifierConfig = ClassifierConfig()
  model: ModelConfig = ModelConfig()
  pretrain: PretrainConfig = PretrainConfig()
  env: EnvConfig = EnvConfig()
  rl: RLConfig = RLConfig()
  # The algorithm's hyperparameters, read by jaxrlgen.algos.make.
  algo: Any = dataclasses.field(default_factory=lambda: algo_config('ddpo_is'))
  reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
  eval: EvalConfig = EvalConfig()
  # Low-rank adapters on the pretrained U-Net (rank 0: train every
  # parameter). Its products are 3x3 convolutions and dense layers named
  # like Conv3x3_0, ResBlock_0/Conv3x3_1, Dense_0: `targets` is a regex.
  lora: lora_lib.LoraConfig = lora_lib.LoraConfig(targets='.*')

  def __post_init__(self):
    schema.non_negative(self, 'seed')
    schema.non_negative(self, 'total_steps', 'checkpoint_every')
    schema.positive(self, 'log_every', 'max_checkpoints')
    self.model.unet(self.data.image_size)  # The U-Net's checks.
    if self.env.guidance_scale != 1.0 and self.pretrain.label_dropout == 0.0:
      raise schema.FieldError(
          'pretrain.label_dropout',
          f'=0.0 leaves no unconditional model for config.env.guidance_scale='
          f'{self.env.guidance_scale}: set it > 0 (e.g. 0.1) so that the '
          'denoiser also learns eps(x_t, t, no class).')
    conditions = self.algo.get('num_conditions')
    if conditions is not None and conditions <= digits.NUM_CLASSES:
      raise schema.FieldError(
          'algo.num_conditions', f'={conditions} must exceed the '
          f'{digits.NUM_CLASSES} classes (ids 0..9, and 10 for no class).')


def parse(config: ml_collections.ConfigDict) -> Config:
  """The whole config as its dataclasses, every check run."""
  return schema.parse(Config, config, 'config')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The config of the comma-separated variants in `arg` (any order)."""
  reward, algo, sizes = 'classifier', 'ddpo_is', None
  for name in filter(None, (part.strip() for part in arg.split(','))):
    if name in ALGORITHMS:
      algo = name
    elif name in image_rewards.NAMES:
      reward = name
    elif name in SIZES:
      sizes = name
    else:
      raise ValueError(
          f'Unknown variant {name!r} in ddpo_digits/config.py:{arg}; known: '
          f'rewards {sorted(image_rewards.NAMES)}, algorithms '
          f'{list(ALGORITHMS)}, sizes {list(SIZES)}.')
  config = schema.to_config(Config(
      algo=algo_config(algo), reward=RewardConfig(terms=((reward, 1.0),))))
  if sizes == 'smoke':
    _smoke(config)
  return config


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Every stage at tiny sizes (about a minute on a CPU): the tests' config."""
  config.classifier.update(features=(8,), steps=4, batch_size=16, log_every=2)
  # Native convolutions compile faster; at this size they also run fast.
  config.model.update(features=(8,), embed_dim=16, num_groups=4, im2col=False)
  config.pretrain.update(steps=4, batch_size=16, log_every=2)
  config.env.update(num_timesteps=100, num_steps=4)
  config.rl.update(batch_size=8, group_size=2)
  algo = config.algo  # Each algorithm's own fields only.
  if 'num_minibatches' in algo:  # ddpo_sf is on-policy: one minibatch.
    algo.num_minibatches = min(algo.num_minibatches, 2)
  if 'min_count' in algo:  # DDPO's per-class reward statistics.
    algo.update(min_count=2, buffer_size=4)
  config.eval.update(every=2, samples_per_class=2, batch_size=20,
                     grid_columns=2)
  config.update(total_steps=3, log_every=1, checkpoint_every=2)
