"""Developer tools that are not part of the raygbm package (python -m tools.gen_docs)."""
