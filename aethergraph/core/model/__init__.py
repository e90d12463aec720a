"""The graph model: callable specs, task graphs and their references, the registry, input type checks."""
