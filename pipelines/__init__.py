"""The session pipeline (plain asyncio over typed events) and the offline pipelines. Never imports Ray.

Modules: ``events`` (wire vocabulary), ``session`` (the pipeline), ``stages`` (one per agent), ``storage``,
``indexing`` (KB index build), ``config`` (settings), ``errors`` (stable error codes).
"""

__all__ = ["config", "errors", "events", "indexing", "session", "stages", "storage"]
