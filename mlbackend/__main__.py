"""`python -m mlbackend` runs the command line."""
import sys

from mlbackend.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
