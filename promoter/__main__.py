from promoter.entry import main

raise SystemExit(main())
