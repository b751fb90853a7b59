"""Tests for jaxrlgen/data/digits.py: the TFDS builder of scikit-learn's digits."""

import numpy as np
import pytest
from sklearn import datasets

from jaxrlgen.data import digits


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  return data_dir, digits.load_digits(data_dir, heldout_per_class=30, seed=2)


def _records(source):
  return [source[i] for i in range(len(source))]


def test_splits_are_disjoint_stratified_and_cover_the_data(built):
  _, splits = built
  train, heldout = _records(splits['train']), _records(splits['heldout'])
  sk = datasets.load_digits()
  assert len(train) + len(heldout) == len(sk.target) == 1797
  train_rows = {int(r['index']) for r in train}
  heldout_rows = {int(r['index']) for r in heldout}
  assert not train_rows & heldout_rows
  assert len(train_rows | heldout_rows) == 1797
  np.testing.assert_array_equal(
      np.bincount([r['label'] for r in heldout], minlength=10), 30)
  # Every record is the scikit-learn image and label of its row.
  for r in train[:50] + heldout[:50]:
    row = int(r['index'])
    np.testing.assert_array_equal(r['image'][..., 0], sk.images[row])
    assert r['label'] == sk.target[row]


def test_split_is_seeded():
  labels = datasets.load_digits().target
  a = digits.split_indices(labels, 10, seed=0)
  b = digits.split_indices(labels, 10, seed=0)
  c = digits.split_indices(labels, 10, seed=1)
  np.testing.assert_array_equal(a['heldout'], b['heldout'])
  assert set(a['heldout'].tolist()) != set(c['heldout'].tolist())


def test_rebuilding_reuses_the_files(built):
  data_dir, splits = built
  again = digits.load_digits(data_dir, heldout_per_class=30, seed=2)
  assert len(again['train']) == len(splits['train'])
  assert again['heldout'][3]['index'] == splits['heldout'][3]['index']


def test_to_arrays_scales_and_upsamples(built):
  _, splits = built
  images, labels = digits.to_arrays(splits['heldout'])
  assert images.shape == (300, 8, 8, 1) and images.dtype == np.float32
  assert labels.shape == (300,) and labels.dtype == np.int32
  raw = np.stack([splits['heldout'][i]['image'] for i in range(300)])
  np.testing.assert_allclose(images, raw / 8.0 - 1.0)
  big, _ = digits.to_arrays(splits['heldout'], image_size=16)
  assert big.shape == (300, 16, 16, 1)
  assert big.min() >= -1.0 and big.max() <= 1.0
  # Upsampling keeps the image: its 2x2-block means track the original.
  blocks = big.reshape(300, 8, 2, 8, 2, 1).mean(axis=(2, 4))
  assert np.corrcoef(blocks.ravel(), images.ravel())[0, 1] > 0.95
  with pytest.raises(ValueError, match='image_size'):
    digits.to_arrays(splits['heldout'], image_size=4)


def test_config_validation_and_names():
  assert digits.DigitsConfig(heldout_per_class=5, seed=1).name == \
      'heldout5_seed1'
  assert digits.DigitsConfig(heldout_per_class=5) == \
      digits.DigitsConfig(heldout_per_class=5, seed=0)
  with pytest.raises(ValueError, match='heldout_per_class'):
    digits.DigitsConfig(heldout_per_class=174)
  with pytest.raises(ValueError, match='seed'):
    digits.DigitsConfig(seed=-1)
