"""``python -m services.cli`` is the ``modelbus`` command."""

from services.cli.main import main

if __name__ == "__main__":
    main()
