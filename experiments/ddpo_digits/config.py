"""DDPO / DPOK on scikit-learn's 8x8 digits: a class-conditional DDPM, then RL.

A reward classifier is trained on held-out digits, a small U-Net is
pretrained with DDPM's objective on the others, and RL fine-tunes the
denoiser against the reward, each denoising step an action:

  python -m experiments.main --config=experiments/configs/ddpo_digits.py \
      --workdir=/tmp/ddpo_digits

The default maximises the classifier's log-probability of the requested
class with DDPO_IS. A variant string after the file name picks another
reward and/or algorithm, e.g.

  --config=experiments/configs/ddpo_digits.py:png_compressibility
  --config=experiments/configs/ddpo_digits.py:classifier,dpok

(rewards: jaxrlgen.rewards.image.REGISTRY; algorithms: ddpo_sf, ddpo_is,
dpok). Restarting with the same --workdir resumes each stage.
"""

import ml_collections

from jaxrlgen import algos
from jaxrlgen.rewards import image as image_rewards
from jaxrlgen.train import optim

ALGORITHMS = ('ddpo_sf', 'ddpo_is', 'dpok')


def parse_variant(variant: str) -> tuple[str, str]:
  """'reward,algo' (either part optional, any order) -> (reward, algo)."""
  reward, algo = 'classifier', 'ddpo_is'
  for part in filter(None, (p.strip() for p in variant.split(','))):
    if part in ALGORITHMS:
      algo = part
    elif part in image_rewards.REGISTRY:
      reward = part
    else:
      raise ValueError(
          f'Unknown variant {part!r} in ddpo_digits.py:{variant}; give a '
          f'reward from {sorted(image_rewards.REGISTRY)} and/or an algorithm '
          f'from {ALGORITHMS}.')
  return reward, algo


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  reward, algo = parse_variant(variant)
  config = ml_collections.ConfigDict()
  config.recipe = 'experiments.ddpo_digits.recipe:run'  # The recipe that runs it.
  config.seed = 0  # Seeds inits, data order, noise and conditions.
  config.total_steps = 100  # RL steps.
  config.log_every = 1  # RL steps between metric fetches and log lines.
  config.checkpoint_every = 20  # RL steps between checkpoints (and the end).
  config.max_checkpoints = 2  # RL checkpoints kept.

  config.data = ml_collections.ConfigDict(dict(
      data_dir='',  # TFDS data_dir; '' means WORKDIR/data.
      heldout_per_class=70,  # Digits per class kept for the classifier only.
      seed=0,  # Seed of the train / held-out split.
      image_size=8,  # Side of the images; > 8 upsamples (bilinear).
  ))

  config.classifier = ml_collections.ConfigDict(dict(
      features=(32, 64),  # CNN width per resolution level.
      dropout=0.1,  # Dropout before the linear layer.
      max_shift=1,  # Random translation augmentation, in pixels.
      steps=1200,  # Training steps on the held-out digits.
      batch_size=64,  # Images per step.
      log_every=100,  # Steps between log lines.
      optimizer=optim.config(2e-3, 'cosine', warmup_steps=50),
  ))

  # The denoiser (jaxrlgen.models.unet.UNetConfig; size and classes come
  # from the data).
  config.model = ml_collections.ConfigDict(dict(
      features=(32, 64),  # U-Net width per resolution level.
      num_res_blocks=1,  # Residual blocks per level and direction.
      embed_dim=64,  # Time / class embedding width.
      num_groups=8,  # GroupNorm groups.
      dtype='float32',  # Compute dtype.
      im2col=True,  # RL's convolutions as matmuls (fast on CPU in scans).
  ))

  config.pretrain = ml_collections.ConfigDict(dict(
      steps=1000,  # DDPM steps on the train digits.
      batch_size=64,  # Images per step.
      label_dropout=0.1,  # Labels replaced by "no class" (for guidance).
      ema_decay=0.995,  # Moving average of the weights: the pretrained model.
      log_every=200,  # Steps between log lines.
      optimizer=optim.config(2e-3, 'cosine', warmup_steps=100),
  ))

  config.env = ml_collections.ConfigDict(dict(
      num_timesteps=1000,  # Training timesteps T of the forward process.
      beta_schedule='linear',  # linear | cosine.
      beta_start=1e-4,  # Linear schedule's first beta.
      beta_end=0.02,  # Linear schedule's last beta.
      sampler='ddim',  # ddim | ddpm (ancestral).
      num_steps=20,  # Denoising steps K: the MDP's horizon.
      eta=1.0,  # DDIM noise scale in (0, 1].
      guidance_scale=1.0,  # Classifier-free guidance weight; 1: none.
      clip_denoised=True,  # Clip the x0-prediction to [-1, 1].
  ))

  config.rl = ml_collections.ConfigDict(dict(
      batch_size=64,  # Samples per RL step (conditions x group_size).
      group_size=4,  # Samples per condition (class) in a step.
      optimizer=optim.config(1e-4),
  ))

  config.algo = algos.default_config(algo)  # Hyperparameters of the algorithm.
  config.algo.timestep_fraction = 0.5  # Train on half the steps of a sample.

  config.reward = ml_collections.ConfigDict(dict(
      terms={reward: 1.0},  # Image reward name -> weight.
      jpeg_quality=95,  # JPEG quality of the jpeg_* rewards.
      levels=17,  # Grey levels images are encoded at (the digits have 17).
      host_penalty=0.0,  # Reward of an image whose encoding failed.
      host_workers=4,  # Threads encoding images at once; 0: one per image.
  ))

  config.eval = ml_collections.ConfigDict(dict(
      every=20,  # RL steps between evaluations.
      samples_per_class=20,  # Evaluation samples per class (fixed noise).
      batch_size=100,  # Samples per evaluation batch.
      grid_columns=10,  # Samples per class in the PNG grids.
  ))
  return config
