"""Model logic with no Ray: load (packaged, local path, MLflow), infer, batch, fall back."""

__all__: list[str] = []
