"""Command-line entry points of ``correspondence`` (declared as console scripts in setup.py)."""
