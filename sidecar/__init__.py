"""ecs-protection sidecar: keeps an ECS task's scale-in protection on while its app is busy."""

__version__ = "0.1.0"
