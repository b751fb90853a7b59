"""The calculator taken away: a responder for `config.multiturn.responder`.

  --config.multiturn.responder=experiments/tool_use/responders.py:unavailable

A turn that calls the tool gets `<result>none</result>` instead of
the product (the model must then answer from its own weights in the next
turn); a turn without a call is the answer and ends the episode, as with the
real calculator.
"""

from jaxrlgen import tools
from jaxrlgen.envs import multiturn

OBSERVATION = '<result>none</result>'  # Fits the 24-token observation.


def _replies(last_turn: int):
  toolset = tools.make(tools.ToolsConfig(names=('calculator',)))

  def replies(turn, texts):
    if turn >= last_turn:
      return [multiturn.Reply(done=True) for _ in texts]
    out = []
    for text in texts:
      call = toolset.format.parse(text) if text else None
      out.append(multiturn.Reply(done=True) if call is None
                 else multiturn.Reply(observation=OBSERVATION))
    return out
  return replies


def unavailable(turns, tokenizer, pad_id):
  """`(turns, tokenizer, pad_id) -> Responder`: every call is refused."""
  return multiturn.HostResponder(_replies(turns.max_turns - 1), tokenizer,
                                 turns.observation_tokens, pad_id)
