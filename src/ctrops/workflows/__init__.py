"""End-to-end jobs behind the CLI (train, predict, demo), callable from Python too."""
