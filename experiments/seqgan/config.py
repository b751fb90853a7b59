"""SeqGAN on the synthetic-oracle benchmark, with the MLE and PG-BLEU baselines.

Yu et al. 2017, Table 1: a random LSTM oracle (weights ~ N(0, 1)) generates
10,000 sequences of 20 tokens over 5,000 words; generators are scored by
NLL-oracle. The generator is pretrained by MLE, the CNN discriminator is
pretrained against it, then three branches train from the same start: MLE
only, PG-BLEU and SeqGAN. See `experiments/seqgan/recipe.py` for the outputs.

  python -m experiments.main --config=experiments/seqgan/config.py \
      --workdir=/tmp/seqgan_oracle

  # Every phase at tiny sizes, in about a minute on 2 CPU cores:
  python -m experiments.main --config=experiments/seqgan/config.py:smoke \
      --workdir=/tmp/seqgan_smoke

Restarting with the same --workdir resumes (finished phases are skipped).

The fields, their defaults and one-line comments, and their checks are the
schema in `experiments/seqgan/recipe.py` (`SeqGANConfig` and its sections).
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

from experiments import variants
from experiments.seqgan import recipe
from jaxrlgen import schema


def smoke(config: ml_collections.ConfigDict) -> None:
  """Tiny sizes: every phase runs (a few epochs each) in about a minute."""
  config.update(vocab_size=24, length=6, checkpoint_every=2)
  config.oracle.update(embed_dim=8, hidden_dim=8, num_samples=256)
  config.generator.update(embed_dim=8, hidden_dim=8, sample_block=8)
  config.pretrain.update(epochs=6, batch_size=32, learning_rate=0.02)
  config.discriminator.update(embed_dim=8, filter_widths=(1, 3, 6),
                              num_filters=(8, 8, 8), batch_size=32,
                              score_chunk=64)
  config.discriminator_pretrain.update(rounds=2, epochs=1, num_negatives=64)
  config.adversarial.update(epochs=4, batch_size=16, num_rollouts=2,
                            discriminator_rounds=2, discriminator_epochs=1,
                            num_negatives=32)
  config.pg_bleu.update(num_rollouts=2, max_order=2)
  config.eval.update(every=2, num_samples=256, chunk=128)


VARIANTS = {'smoke': smoke}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The paper's setup; `arg` lists variants to apply, comma-separated."""
  return variants.apply(schema.to_config(recipe.SeqGANConfig()), arg,
                        VARIANTS, 'SeqGAN')
