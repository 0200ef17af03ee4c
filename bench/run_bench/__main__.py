from run_bench.cli import main

raise SystemExit(main())
