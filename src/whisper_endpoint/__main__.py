from whisper_endpoint.cli import main

if __name__ == "__main__":  # engines may start worker processes that import this module again (spawn)
    raise SystemExit(main())
