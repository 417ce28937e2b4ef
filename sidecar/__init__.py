"""ecs-protection sidecar: keeps an ECS task's scale-in protection on while its app is busy.

Its version is the package metadata's (`ecs-protection-sidecar --version`).
"""
