"""Scale-out: the device mesh, sharding rules, multi-host start-up, memory.

  mesh = parallel.make_mesh(config.mesh)        # axes data, fsdp, tensor
  layout = parallel.Layout(mesh, transformer.logical_axes(model_config))
  with parallel.activate(mesh):                 # activation constraints on
    params = layout.init(init_fn, key)          # created in their shards
    step = layout.jit_step(step_fn, state)      # explicit in/out shardings
    state, metrics = step(state, layout.batch(host_rows), key)

See mesh.py, sharding.py, distributed.py and memory.py.
"""

from jaxrlgen.parallel.distributed import initialize
from jaxrlgen.parallel.distributed import is_primary
from jaxrlgen.parallel.distributed import process_shard
from jaxrlgen.parallel.memory import bytes_per_device
from jaxrlgen.parallel.memory import report as memory_report
from jaxrlgen.parallel.mesh import AXES
from jaxrlgen.parallel.mesh import BATCH_AXES
from jaxrlgen.parallel.mesh import batch_size_divisor
from jaxrlgen.parallel.mesh import make_mesh
from jaxrlgen.parallel.mesh import resolve_shape
from jaxrlgen.parallel.sharding import Layout
from jaxrlgen.parallel.sharding import RULES
from jaxrlgen.parallel.sharding import activate
from jaxrlgen.parallel.sharding import batch_sharding
from jaxrlgen.parallel.sharding import jit_step
from jaxrlgen.parallel.sharding import replicated
from jaxrlgen.parallel.sharding import sharded_init
from jaxrlgen.parallel.sharding import spec_for
from jaxrlgen.parallel.sharding import tree_shardings
