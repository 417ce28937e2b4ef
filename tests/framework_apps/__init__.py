"""Apps that real worker processes of Celery, RQ and Dramatiq load in the framework tests."""
