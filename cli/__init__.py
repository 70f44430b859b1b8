"""The `tfmeta` command line (installed as the `tfmeta_cli` package)."""
