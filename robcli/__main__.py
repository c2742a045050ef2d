"""``python -m robcli ...`` (and ``torchrun ... -m robcli ...``): the same entry point as the ``robcli`` command."""

from robcli.cli.main import main

if __name__ == "__main__":
    main()
