"""Chat templates render as transformers' `apply_chat_template` does."""

import json

import pytest

from jaxrlgen.data import chat

# ChatML, the layout of SmolLM2-Instruct (with its default system prompt).
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] "
    "!= 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant "
    "named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
# Llama-2 / Mistral style: BOS and EOS variables, raise_exception on roles
# that do not alternate.
INST = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == "
    "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation "
    "roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + "
    "' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% else %}{{ raise_exception("
    "'Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}")
# Block tags on lines of their own (trim_blocks / lstrip_blocks), a
# namespace, tojson with non-ASCII text, and a generation block.
BLOCKS = """{%- set ns = namespace(system='') %}
{%- for m in messages %}
  {%- if m.role == 'system' %}{% set ns.system = m.content %}{% endif %}
{%- endfor %}
{% if ns.system %}
    <sys>{{ ns.system | tojson }}</sys>
{% endif %}
{% for m in messages if m.role != 'system' %}
    {% if m.role == 'assistant' %}
    {% generation %}{{ m.role }}: {{ m.content }}{% endgeneration %}
    {% else %}
    {{ m.role }}: {{ m.content }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}assistant:{% endif %}"""

CONVERSATIONS = [
    [{'role': 'user', 'content': 'What is 2+2?'}],
    [{'role': 'system', 'content': 'Answer tersely. <b>"Ünïcode"</b>'},
     {'role': 'user', 'content': 'Hi\n  there'}],
    [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'},
     {'role': 'user', 'content': 'c', 'name': None}],
]


@pytest.fixture(scope='module')
def hf_tokenizer():
  tokenizers = pytest.importorskip('tokenizers')
  transformers = pytest.importorskip('transformers')
  vocab = {t: i for i, t in enumerate(['<unk>', '<s>', '</s>', 'a'])}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, '<unk>'))
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token='<s>', eos_token='</s>',
      unk_token='<unk>')


@pytest.mark.parametrize('template', [CHATML, INST, BLOCKS],
                         ids=['chatml', 'inst', 'blocks'])
@pytest.mark.parametrize('add_generation_prompt', [True, False])
def test_same_text_as_transformers(hf_tokenizer, template,
                                   add_generation_prompt):
  ours = chat.ChatTemplate(template, {'bos_token': '<s>', 'eos_token': '</s>',
                                      'unk_token': '<unk>'})
  rendered = 0
  for messages in CONVERSATIONS:
    try:
      want = hf_tokenizer.apply_chat_template(
          messages, chat_template=template, tokenize=False,
          add_generation_prompt=add_generation_prompt)
    except Exception:  # pylint: disable=broad-except
      # The template refuses this conversation: so must ours, by name.
      with pytest.raises(chat.ChatTemplateError,
                         match='config.task.chat_template'):
        ours.render(messages, add_generation_prompt=add_generation_prompt)
      continue
    got = ours.render(messages, add_generation_prompt=add_generation_prompt)
    assert got == want
    rendered += 1
  assert rendered >= 2


def test_refusal_and_syntax_errors_name_field_and_message():
  template = chat.ChatTemplate(INST, {'bos_token': '<s>'}, source='my/dir')
  with pytest.raises(chat.ChatTemplateError) as e:
    template.render(chat.conversation('hi', system_prompt='Be brief.'))
  msg = str(e.value)
  assert 'config.task.chat_template' in msg and 'my/dir' in msg
  assert 'Conversation roles must alternate' in msg
  with pytest.raises(chat.ChatTemplateError, match='does not compile'):
    chat.ChatTemplate('{% for m in messages %}').render([])


def test_conversation_and_from_dir(tmp_path):
  assert chat.conversation('q', 'S') == [
      {'role': 'system', 'content': 'S'}, {'role': 'user', 'content': 'q'}]
  assert chat.conversation([{'role': 'system', 'content': 'own'}], 'S') == [
      {'role': 'system', 'content': 'own'}]
  assert chat.from_dir(tmp_path) is None
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({
      'chat_template': INST, 'bos_token': {'content': '<s>'},
      'eos_token': '</s>'}))
  template = chat.from_dir(tmp_path)
  assert template.special_tokens == {'bos_token': '<s>', 'eos_token': '</s>'}
  assert template.render([{'role': 'user', 'content': 'x'},
                          {'role': 'assistant', 'content': 'y'}]) == (
                              '<s>[INST] x [/INST]y</s>')


def test_tokenizer_special_tokens_reach_the_template():
  """A template that reads bos_token / eos_token gets the tokenizer's."""
  from jaxrlgen.data.hf_tokenizer import HFTokenizer  # pylint: disable=g-import-not-at-top
  names = {0: '<s>', 1: '</s>'}
  tokenizer = HFTokenizer(
      encode=lambda text: [], decode=lambda ids: ''.join(names[i] for i in ids),
      vocab_size=2, eos_id=1, bos_id=0,
      chat_template='{{ bos_token }}{{ messages[0].content }}{{ eos_token }}')
  template = chat.of_tokenizer(tokenizer)
  assert template.render([{'role': 'user', 'content': 'hi'}]) == '<s>hi</s>'
