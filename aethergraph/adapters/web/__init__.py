"""The HTTP API and run viewer: a bus subscriber that reads projections and follows runs (docs/server.md).

Importing this package loads nothing heavy; FastAPI and uvicorn load when a server starts.
"""
