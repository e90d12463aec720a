"""Public import paths of context services (``aethergraph.services.runtime.base`` / ``.registry``).

The implementation lives in ``aethergraph.core``; these modules only name it.
"""
