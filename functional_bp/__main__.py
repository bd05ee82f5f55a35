from functional_bp.cli import main

raise SystemExit(main())
