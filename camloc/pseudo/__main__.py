from camloc.pseudo.cli import main

raise SystemExit(main())
