from whisper_endpoint.cli import main

raise SystemExit(main())
