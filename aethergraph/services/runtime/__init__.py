"""Custom context services: :mod:`.base` (``Service``) and :mod:`.registry` (``register_context_service``)."""
