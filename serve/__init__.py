"""Ray Serve layer: deployments, ingress, app graph and the local launcher. The only package that imports Ray."""

__all__: list[str] = []
