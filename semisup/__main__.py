from semisup.cli import main

raise SystemExit(main())
