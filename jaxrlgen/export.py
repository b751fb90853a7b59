"""Writes any checkpoint jaxrlgen loads as a Hugging Face directory.

  python -m jaxrlgen.export --model=SmolLM2-135M-Instruct.Q4_1.gguf \
      --out=/tmp/smollm2 [--dtype=float32]

MODEL is a Hugging Face directory or a `.gguf` file. The output holds
`model.safetensors` (`hf.save`), `config.json`, and the tokenizer:
`tokenizer.json`, `tokenizer_config.json` (with the chat template, BOS and
EOS), `special_tokens_map.json` and `generation_config.json`, so that
`transformers.AutoModelForCausalLM.from_pretrained(OUT)` and
`AutoTokenizer.from_pretrained(OUT)` load it. A GGUF file's quantized
weights are written dequantized, in `dtype`.
"""

import json
import os

from absl import app
from absl import flags
import flax
import numpy as np
from safetensors.numpy import save_file

from jaxrlgen import parallel
from jaxrlgen.models import gguf
from jaxrlgen.models import hf
from jaxrlgen.policies import lora as lora_lib

DTYPES = ('float32', 'bfloat16', 'float16')


def export(model_path: str | os.PathLike[str], out: str | os.PathLike[str],
           dtype: str = 'float32') -> str:
  """Writes the checkpoint at `model_path` as a Hugging Face directory.

  Args:
    model_path: a Hugging Face checkpoint directory or a GGUF file.
    out: the output directory (created; files in it are overwritten).
    dtype: dtype of the written tensors: 'float32', 'bfloat16' or 'float16'.
  Returns:
    `out`.
  Raises:
    FileNotFoundError: `model_path` does not exist.
    ValueError: an unknown dtype, or a checkpoint jaxrlgen cannot load.
  """
  model_path, out = os.fspath(model_path), os.fspath(out)
  if dtype not in DTYPES:
    raise ValueError(f'--dtype={dtype!r}; known: {DTYPES}.')
  if not os.path.exists(model_path):
    raise FileNotFoundError(f'--model={model_path} does not exist: give a '
                            'Hugging Face directory or a .gguf file.')
  if os.path.realpath(model_path) == os.path.realpath(out):
    raise ValueError(f'--out={out} is the model itself; write elsewhere.')
  # Parameters are loaded in float32 (or bfloat16 when that is what is
  # written) and cast as they are written.
  load_dtype = 'bfloat16' if dtype == 'bfloat16' else 'float32'
  config, params = hf.load(model_path, param_dtype=load_dtype)
  write(out, model_path, config, params, dtype=dtype)
  return out


def write(out: str | os.PathLike[str], source: str | os.PathLike[str],
          config, params, *, dtype: str | None = None) -> None:
  """Writes `params` of the model loaded from `source` (a Hugging Face
  directory or a GGUF file: trained parameters, say) as a Hugging Face
  directory, with `source`'s tokenizer. Every process of a multi-host run
  calls it; process 0 writes."""
  out, source = os.fspath(out), os.fspath(source)
  hf.save(out, config, params, hf_config=hf.read_config(source), dtype=dtype)
  if not parallel.is_primary():
    return
  if gguf.is_gguf(source):
    gguf.open_file(source).save_tokenizer(out)
  else:
    hf.copy_tokenizer(source, out)


def write_adapters(out: str | os.PathLike[str],
                   source: str | os.PathLike[str], config, adapters,
                   lora: lora_lib.LoraConfig) -> None:
  """Writes adapter factors alone in PEFT's layout, for the base at `source`.

  `adapter_model.safetensors` holds `base_model.model.<module>.lora_A.weight`
  [r, in] and `lora_B.weight` [out, r] per adapted module (Hugging Face's
  module names and row orders), and `adapter_config.json` rank, alpha and
  the target modules; `peft.PeftModel.from_pretrained(base, out)` loads them
  on the base model exported from `source`. Process 0 writes.

  Raises:
    ValueError: an architecture whose adapted kernels are not one Hugging
      Face linear layer each (GPT-2's fused attention).
  """
  out, source = os.fspath(out), os.fspath(source)
  hf_config = hf.read_config(source)
  arch = hf.architecture(hf_config)
  flat = flax.traverse_util.flatten_dict(adapters)
  tensors, modules = {}, set()
  for tensor in hf.ARCHITECTURES[arch].tensors(config):
    path = tensor.ours[0]
    if path[-1] != 'kernel' or path[:-1] + ('kernel_lora_a',) not in flat:
      continue
    if len(tensor.ours) != 1 or len(tensor.hf) != 1:
      raise ValueError(f'{arch}: {"/".join(path)} is not one linear layer '
                       'in Hugging Face; PEFT export needs one per kernel.')
    module = tensor.hf[0].removesuffix('.weight')
    a = np.asarray(flat[path[:-1] + ('kernel_lora_a',)], np.float32)
    b = np.asarray(flat[path[:-1] + ('kernel_lora_b',)], np.float32)
    # Ours: x [.., in] @ A [in, r] @ B [r, out]; torch: W [out, in] acts as
    # x @ W.T, so A is stored [r, in] and B [out, r]. The flattened axes
    # follow the kernel's (heads-major), as the base's own tensors do.
    tensors[f'base_model.model.{module}.lora_A.weight'] = (
        np.ascontiguousarray(a.T))
    tensors[f'base_model.model.{module}.lora_B.weight'] = (
        np.ascontiguousarray(b.T))
    modules.add(module.rsplit('.', 1)[-1])
  if not tensors:
    raise ValueError('No adapter factors to write: config.lora.rank is 0 or '
                     'config.lora.targets matched nothing.')
  if not parallel.is_primary():
    return
  os.makedirs(out, exist_ok=True)
  save_file(tensors, os.path.join(out, 'adapter_model.safetensors'),
            metadata={'format': 'pt'})
  adapter_config = {
      'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': lora.rank,
      'lora_alpha': lora.alpha, 'lora_dropout': lora.dropout,
      'target_modules': sorted(modules), 'bias': 'none',
      'fan_in_fan_out': False, 'use_rslora': False, 'inference_mode': True,
      'base_model_name_or_path': source}
  with open(os.path.join(out, 'adapter_config.json'), 'w') as f:
    json.dump(adapter_config, f, indent=2)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags (only when run as a command: importing the
  module, as the recipes do, must not add --model / --out / --dtype)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('model', None, 'A Hugging Face checkpoint directory or '
                      'a .gguf file.', **fv)
  flags.DEFINE_string('out', None, 'Output directory.', **fv)
  flags.DEFINE_enum('dtype', 'float32', DTYPES, 'dtype of the written '
                    'tensors.', **fv)
  flags.mark_flags_as_required(['model', 'out'], flag_values=flag_values)


def main(argv):
  del argv
  print(export(flags.FLAGS.model, flags.FLAGS.out, flags.FLAGS.dtype))


if __name__ == '__main__':
  define_flags()
  app.run(main)
