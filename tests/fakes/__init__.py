"""Test doubles that behave like the real things: servers on port 0 and Protocol classes."""
