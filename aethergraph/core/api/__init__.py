"""What users decorate with: ``@tool``, ``@graph_fn``, ``@graphify`` and ``DualStageTool``, and what they make."""
