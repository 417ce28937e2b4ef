"""`python -m ecs_protection` is the `ecs-protection` command."""

from ecs_protection._cli import run

run()
