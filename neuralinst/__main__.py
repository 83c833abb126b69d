from neuralinst.cli import main

raise SystemExit(main())
