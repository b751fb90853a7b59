"""The tool layer: its config, a batch of calls, and tools that misbehave
(raise, hang holding the GIL, kill their process, return too much): each
costs at most its timeout, becomes an error observation, is counted, and
leaves no process, thread or file behind."""

import os
import re
import tempfile
import time

import pytest

from jaxrlgen import schema
from jaxrlgen import tools
from jaxrlgen.rewards import workers

USER = 'tests.tools.user_tools'


@pytest.mark.parametrize('section,message', [
    ({'names': ()}, 'config.tools.names=() must name at least one tool'),
    ({'names': ('abacus',)}, "Unknown tool config.tools.names='abacus'"),
    ({'names': ('calculator', 'calculator')}, "'calculator' twice"),
    ({'names': (f'{USER}:nothing',)}, 'has no attribute'),
    ({'names': ('no_such_file.py:f',)}, "no file 'no_such_file.py'"),
    ({'names': ('os:sep',)}, 'not a function str -> str'),
    ({'names': ('a b=os:getcwd',)}, 'must be an identifier'),
    ({'format': 'xml'}, "config.tools.format='xml'; allowed"),
    ({'format': 'json:nothing'}, 'config.tools.format'),
    ({'timeout_s': 0.0}, 'config.tools.timeout_s=0.0 must be positive'),
    ({'max_output_chars': 0}, 'config.tools.max_output_chars=0 must be'),
    ({'workers': -1}, 'config.tools.workers=-1 must be >= 0'),
    ({'timeout_s': float('nan')}, 'config.tools.timeout_s'),
    ({'tools': 3}, 'Unknown field(s) config.tools.tools'),
])
def test_config_errors_name_the_field(section, message):
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(
      ')', r'\)')):
    tools.make(section)


@pytest.mark.parametrize('field,value', [
    ('names', 'calculator'), ('names', (3,)), ('format', 3),
    ('timeout_s', 'fast'), ('timeout_s', float('inf')),
    ('max_output_chars', 1.5), ('max_output_chars', -1), ('workers', 'two'),
    ('workers', 0.5),
])
def test_ill_typed_fields_are_named(field, value):
  with pytest.raises(ValueError, match=f'config.tools.{field}'):
    schema.parse(tools.ToolsConfig, {field: value}, 'config.tools')


def test_config_defaults_round_trip():
  config = tools.ToolsConfig()
  assert schema.parse(tools.ToolsConfig, schema.to_config(config),
                      'config.tools') == config
  assert tools.make(None).names == ('calculator',)


def test_a_tool_that_cannot_reach_a_worker_is_refused_when_built():
  def local(text):
    return text
  with pytest.raises(ValueError, match="'local' cannot run in a worker"):
    tools.ToolSet({'local': tools.Tool(local)},
                  tools.formats.TagFormat({'local': tools.Tool(local)}),
                  timeout_s=1.0, max_chars=10)


def test_inline_calls_statuses_and_metrics():
  toolset = tools.make({'names': ('calculator',), 'max_output_chars': 40})
  results = toolset.run_calls([
      '<tool>12 * 7</tool>', None, 'It is 84.', '<tool>1/0</tool>',
      '<tool>2 ** 200</tool>', '<tool>1+1', '<tool name="abacus">1</tool>'])
  statuses = [r and r.status for r in results]
  assert statuses == ['ok', None, 'no_call', 'error', 'truncated',
                      'bad_call', 'unknown_tool']
  assert results[0].observation == '<result>84</result>'
  assert results[0].name == 'calculator'
  assert results[2].observation == ''
  assert results[3].output == 'error: ValueError: division by zero'
  assert results[4].output == (str(2 ** 200)[:40] +
                               '\nerror: output truncated at 40 chars')
  assert results[5].output == 'error: the call has no closing </tool>'
  assert results[6].observation.startswith(
      "<result>error: unknown tool 'abacus'")
  assert tools.metrics(results) == {
      'tools/calls': 5, 'tools/failures': 4, 'tools/ok': 1, 'tools/errors': 1,
      'tools/timeouts': 0, 'tools/truncated': 1, 'tools/unknown_tool': 1,
      'tools/bad_calls': 1}
  assert toolset.run('calculator', '2 + 2').output == '4'


def _scratch_dirs():
  return {d for d in os.listdir(tempfile.gettempdir())
          if d.startswith('jaxrlgen-tools-')}


def test_misbehaving_tools_cost_their_timeout_and_leak_nothing(tmp_path):
  module = tmp_path / 'my_tools.py'
  module.write_text('def shout(text):\n  return text.upper()\n')
  names = ('calculator', 'python', f'yell={module}:shout') + tuple(
      f'{USER}:{n}' for n in ('echo', 'hang', 'crash', 'fail', 'flood',
                              'number'))
  timeout_s = 1.0
  toolset = tools.make({'names': names, 'timeout_s': timeout_s,
                        'max_output_chars': 100, 'workers': 2})
  call = toolset.format.render_call
  # The first call starts the pool (its zygote imports the tools' modules);
  # the counts after it are the baseline.
  assert toolset.run('echo', 'abc').output == 'cba'
  pool = workers.pool(2)
  before, restarts, scratch = workers.counts(), pool.restarts, _scratch_dirs()
  texts = [call('echo', 'abc'), call('hang', ''), call('crash', ''),
           call('fail', 'x'), call('flood', 'ab'), call('number', 'abc'),
           call('yell', 'abc'), call('calculator', '6*7'),
           call('python', 'import sys\nprint(sys.argv[0][-7:])\n2 ** 10'),
           call('python', 'while True:\n  pass'),
           call('python', 'while True:\n  print("y" * 1000, end="")'),
           call('python', 'import os; os._exit(5)'),
           None, 'no call']
  start = time.monotonic()
  results = toolset.run_calls(texts)
  elapsed = time.monotonic() - start
  statuses = [r and r.status for r in results]
  assert statuses == ['ok', 'timeout', 'error', 'error', 'truncated', 'error',
                      'ok', 'ok', 'ok', 'timeout', 'truncated', 'error', None,
                      'no_call']
  outputs = [r and r.output for r in results]
  assert outputs[0] == 'cba'
  assert outputs[1] == 'error: timed out after 1 s'
  assert outputs[2].startswith('error: the tool failed: its worker process '
                               'died')
  assert outputs[3] == "error: KeyError: 'x'"
  assert outputs[4] == 'ab' * 50 + '\nerror: output truncated at 100 chars'
  assert outputs[5] == 'error: the tool returned a int, not a string'
  assert outputs[6] == 'ABC'
  assert outputs[7] == '42'
  assert outputs[8] == 'main.py\n1024\n'  # Ran in the sandbox's program.
  assert outputs[9] == 'error: timed out after 1 s'
  assert outputs[10] == 'y' * 100 + '\nerror: output truncated at 100 chars'
  assert outputs[11] == 'error: exit status 5'
  # Two workers for six user calls: the hang holds one for its timeout;
  # the sandbox's loop ends at its own. Nothing waits much longer.
  assert elapsed < 2 * timeout_s + tools.base.LIMITS_GRACE_S + 10
  assert pool.restarts == restarts + 2  # The hang and the crash.
  assert workers.counts() == before
  assert _scratch_dirs() == scratch
  metrics = tools.metrics(results)
  assert (metrics['tools/calls'], metrics['tools/failures'],
          metrics['tools/timeouts'], metrics['tools/errors'],
          metrics['tools/truncated']) == (12, 8, 2, 4, 2)


def test_docs_example_runs():
  path = os.path.join(os.path.dirname(__file__), '..', '..', 'docs',
                      'tools.md')
  with open(path) as f:
    example = re.findall(r'```python\n(.*?)```', f.read(), re.S)[0]
  exec(example, {})  # pylint: disable=exec-used
