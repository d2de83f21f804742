"""The `weightformer` command line: a thin shell over library functions."""
