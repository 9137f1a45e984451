"""``python -m bench``: run the benchmarks and write the JSON, Markdown and PNG reports."""
from bench.run import main

main()
