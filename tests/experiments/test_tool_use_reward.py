"""experiments/tool_use: the digits-in-place reward against a Python count,
and the exact-match scoring of held-out samples."""

import numpy as np
import pytest

from experiments.tool_use import rewards
from experiments.tool_use import score
from jaxrlgen.core.types import Rollout
from jaxrlgen.data.tokenizer import ByteTokenizer

_T = 12


def _reference(text: str, answer: int) -> float:
  want = str(answer)
  hits = sum(a == b for a, b in zip(text, want))
  return hits / max(len(want), len(text))


@pytest.mark.parametrize('text,answer', [
    ('56088', 56088), ('56089', 56088), ('5608', 56088), ('560888', 56088),
    ('71931', 371931), ('379315', 371931), ('', 371931), ('x6088', 56088),
    ('7', 7), ('0', 0), ('1234567890', 56088)])
def test_matches_a_python_count(text, answer):
  tok = ByteTokenizer()
  ids = tok.encode(text) + [tok.eos_id]
  tokens = np.full((1, _T), tok.pad_id, np.int32)
  tokens[0, :len(ids)] = ids
  # A '5' after EOS (padding the mask covers by mistake) must not count.
  tokens[0, len(ids):] = ord('5')
  mask = np.arange(_T)[None] < min(len(ids) + 2, _T)
  reward = rewards.digits_in_place(tokenizer=tok)
  rollout = Rollout(context={}, actions=tokens, logp=np.zeros((1, _T)),
                    mask=mask)
  got = reward(rollout, {'answer': np.array([answer], np.int32)})
  assert float(got[0]) == pytest.approx(_reference(text, answer))


def test_score_reads_the_answer_after_the_result():
  lines = [
      {'prompt': '141*365=',
       'completion': '<tool>141*365</tool><result>51465</result>51465'},
      {'prompt': '623*597=',
       'completion': '<tool>623*597</tool><result>371931</result>379315'},
      {'prompt': '388*243=',
       'completion': '<tool>388*234</tool><result>90792</result>90792'},
      {'prompt': '417*201=', 'completion': '83817'},
  ]
  got = score.score(lines)
  assert got['accuracy'] == 0.5
  assert (got['right_5_digit'], got['of_5_digit']) == (2, 3)
  assert (got['right_6_digit'], got['of_6_digit']) == (0, 1)
  assert got['tool_call_rate'] == 0.75
  assert got['operands_right_rate'] == 0.5
