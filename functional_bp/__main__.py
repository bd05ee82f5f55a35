"""``python -m functional_bp ...``: the command line (`functional_bp.cli`)."""

from functional_bp.cli import main

raise SystemExit(main())
