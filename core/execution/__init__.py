"""Running a network: the compiled plan, its passes and memory planning, the executor
that owns one call's state, and the hooks that watch it."""
