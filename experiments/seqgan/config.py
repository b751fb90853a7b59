"""SeqGAN on the synthetic-oracle benchmark, with the MLE and PG-BLEU baselines.

Yu et al. 2017, Table 1: a random LSTM oracle (weights ~ N(0, 1)) generates
10,000 sequences of 20 tokens over 5,000 words; generators are scored by
NLL-oracle. The generator is pretrained by MLE, the CNN discriminator is
pretrained against it, then three branches train from the same start: MLE
only, PG-BLEU and SeqGAN. See `jaxrlgen/train/seqgan.py` for the outputs.

  python -m experiments.main --config=experiments/configs/seqgan_oracle.py \
      --workdir=/tmp/seqgan_oracle

Restarting with the same --workdir resumes (finished phases are skipped).

Every field has the paper's value (the released code's) except where a
comment says "shrunk". The paper's discriminator schedule is what does not
fit 2 CPU cores: 81 MFLOP per sequence and training step (1,720 filters of
widths up to 20 over 64-d embeddings, a 1,720-wide highway layer), so its
pretraining (50 rounds x 3 epochs x 20,000 sequences) is 240 TFLOP and each
adversarial epoch (5 rounds x 3 epochs x 20,000 sequences, plus scoring
19,520 Monte-Carlo completions) 25 TFLOP: about 14 hours for 200 epochs at
the ~100 GFLOP/s these cores sustain. Shrunk here: negatives per
discriminator round (2,000 in pretraining, 320 per adversarial round, each
with as many real sequences) and the number of adversarial epochs (50), for
about 160 TFLOP in all.
"""

import ml_collections

from jaxrlgen.models import discriminator


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.recipe = 'experiments.seqgan.recipe:run'  # The recipe that runs it.
  config.seed = 88  # Seeds the oracle, its data, inits and sampling (paper: 88).
  config.vocab_size = 5000  # Words, shared by oracle, generator, discriminator.
  config.length = 20  # Tokens per sequence (no end token).
  config.start_token = 0  # First input of the LSTMs (an ordinary word too).
  config.log_every = 1  # Epochs (or discriminator rounds) between log lines.
  config.checkpoint_every = 10  # Epochs between checkpoints (and at the end).
  config.max_checkpoints = 2  # Checkpoints kept per phase.

  config.oracle = ml_collections.ConfigDict(dict(
      embed_dim=32,  # Oracle embedding size.
      hidden_dim=32,  # Oracle LSTM size.
      init_std=1.0,  # Every oracle weight ~ N(0, init_std^2).
      num_samples=10_000,  # Oracle samples: the training data (real data).
  ))

  config.generator = ml_collections.ConfigDict(dict(
      embed_dim=32,  # Generator embedding size.
      hidden_dim=32,  # Generator LSTM size.
      init_std=0.1,  # Every generator weight ~ N(0, init_std^2).
      sample_block=128,  # Block size of the two-level inverse-CDF sampler.
      logprob_chunk=1,  # Time steps per chunk of teacher-forced logits.
  ))

  config.pretrain = ml_collections.ConfigDict(dict(
      epochs=120,  # MLE epochs (passes over the 10,000 sequences).
      batch_size=64,  # Sequences per MLE step.
      learning_rate=0.01,  # Adam.
      max_grad_norm=5.0,  # Global-norm gradient clipping.
  ))

  config.discriminator = ml_collections.ConfigDict(dict(
      embed_dim=64,  # Discriminator embedding size.
      filter_widths=discriminator.PAPER_WIDTHS,  # Convolution window widths.
      num_filters=discriminator.PAPER_FILTERS,  # Filters per width.
      dropout_rate=0.25,  # Before the output layer (keep probability 0.75).
      l2_reg=0.2,  # L2 weight on the output layer.
      learning_rate=1e-4,  # Adam.
      batch_size=64,  # Sequences per discriminator step.
      dtype='float32',  # Training compute dtype: float32 | bfloat16.
      score_dtype='bfloat16',  # Compute dtype of reward scoring (forward only).
      score_chunk=256,  # Sequences per forward pass when scoring rewards.
  ))

  config.discriminator_pretrain = ml_collections.ConfigDict(dict(
      rounds=50,  # Rounds of fresh negatives.
      epochs=3,  # Passes over each round's negatives + positives.
      num_negatives=2_000,  # Shrunk (paper 10,000): generated per round.
  ))

  config.adversarial = ml_collections.ConfigDict(dict(
      epochs=50,  # Shrunk (released code: 200-800): epochs of every method.
      batch_size=64,  # Sequences per generator step.
      num_rollouts=16,  # Monte-Carlo completions per prefix (SeqGAN).
      rollouts_per_scan=1,  # Completions per prefix sampled by one scan.
      rollout_update_rate=0.8,  # Delayed copy: rate * copy + (1-rate) * G.
      learning_rate=0.01,  # Adam of the adversarial generator steps.
      max_grad_norm=5.0,  # Global-norm gradient clipping.
      discriminator_rounds=5,  # Discriminator rounds per generator step.
      discriminator_epochs=3,  # Passes over each round's data.
      num_negatives=320,  # Shrunk (paper 10,000): negatives per round.
  ))

  config.pg_bleu = ml_collections.ConfigDict(dict(
      max_order=3,  # BLEU-3, as the released PG-BLEU code (weights 1/3 each).
      smooth_epsilon=0.1,  # Numerator for orders without a match (0: off).
      learning_rate=0.001,  # Adam's default: released pg_bleu.py ignores 0.01.
      num_rollouts=16,  # Monte-Carlo completions per prefix.
  ))

  config.eval = ml_collections.ConfigDict(dict(
      every=5,  # Epochs between NLL-oracle evaluations (paper: 5).
      num_samples=10_000,  # Generator samples scored by the oracle.
      chunk=250,  # Sequences per sampling / scoring chunk.
  ))
  return config
