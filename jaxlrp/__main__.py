"""``python -m jaxlrp``: the command line (see :mod:`jaxlrp.cli`)."""

from jaxlrp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
