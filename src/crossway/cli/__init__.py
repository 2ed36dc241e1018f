"""The `crossway` command line (`crossway.cli.main:main`)."""
