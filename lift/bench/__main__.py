"""``python -m lift.bench`` = ``lift-bench``."""
from .cli import main

main()
