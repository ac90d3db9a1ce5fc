"""The graph a network is: ordered, named nodes, their parameters, the compiled plan,
and the views of it (a spec dict, the memory report)."""
