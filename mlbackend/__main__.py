"""`python -m mlbackend` runs the command line."""

from mlbackend.cli import main_exit

if __name__ == "__main__":
    main_exit()
