"""Command line of ``diffctl.bench.offline_rl`` (see its docstring); ``--help`` lists the options."""

from diffctl.bench.offline_rl import main

if __name__ == "__main__":
    main()
