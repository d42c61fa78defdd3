from litefs.cli import main

raise SystemExit(main())
