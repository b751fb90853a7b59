"""Models as policies: what environments and algorithms call on a model.

A policy wraps one Flax module and names its operations (prefill and cached
decoding, teacher-forced states, heads; a denoiser's noise estimate; a
recurrent cell). Environments step a policy they hold; algorithms reach it
through the environment (`evaluate`, `value`, `lm_logits`, and
`env.policy` for the shapes of heads of their own).
"""

from jaxrlgen.policies.denoiser import DenoiserPolicy
from jaxrlgen.policies.lm import LMPolicy
from jaxrlgen.policies.recurrent import RecurrentPolicy

__all__ = ['DenoiserPolicy', 'LMPolicy', 'RecurrentPolicy']
