"""``python -m molvae`` (and ``torchrun -m molvae``) runs the command-line interface."""

from molvae.cli import main

if __name__ == "__main__":
    main()
