"""Training machinery every recipe shares: the jitted steps (`step`,
`host_step`), the loops (`loop`, `async_loop`), checkpoints, metric writers,
plots and the optimizer. Nothing here belongs to one experiment; whole runs
are `jaxrlgen.recipes`.
"""
