"""The router's benchmark: `python -m loadtest.bench --help`. See loadtest/README.md."""
