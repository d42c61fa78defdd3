"""Child process of Context.run_isolated(): python -m perf._child SPEC_JSON."""
import sys

from perf.common import child_main

if __name__ == "__main__":
    child_main(sys.argv[1])
