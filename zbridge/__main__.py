"""``python -m zbridge``: the ``zbridge`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="zbridge")
