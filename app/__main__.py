"""`python -m app` is the `collapsewatch` command."""

from app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
