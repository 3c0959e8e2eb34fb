"""`skipdecode serve`: an OpenAI-compatible server over the continuous-batching engine.

config.py (ServeConfig) -> bridge.py (the engine on its own thread) -> protocol.py (request
bodies) -> completions.py (OpenAI semantics) -> app.py (ASGI routes, guard) -> server.py
(uvicorn, SIGTERM drain) / ray_app.py (Ray Serve replicas); metrics.py, chat.py, errors.py.
Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client, jinja2); imports neither torch
nor transformers.
"""

from skipdecode.serve.config import ServeConfig

__all__ = ["ServeConfig"]
