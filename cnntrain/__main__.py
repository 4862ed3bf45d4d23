"""`python -m cnntrain` is the same as the `cnntrain` command."""

from cnntrain.cli import main

if __name__ == "__main__":
    main()
