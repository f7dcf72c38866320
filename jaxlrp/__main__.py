"""``python -m jaxlrp``: the command line (see :mod:`jaxlrp.cli`)."""

from jaxlrp.cli import run

if __name__ == "__main__":
    run()
