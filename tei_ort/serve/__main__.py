"""`python -m tei_ort.serve`: the same as the `tei-serve` command."""

from tei_ort.serve.cli import main

if __name__ == "__main__":
    main()
