"""`python -m ftbench ...` (and `torchrun -m ftbench ...`): the `ftbench` command."""

from ftbench.cli import main

if __name__ == "__main__":
    main()
