"""Command line of ``diffctl.bench.critic_probe`` (see its docstring); ``--help`` lists the options."""

from diffctl.bench.critic_probe import main

if __name__ == "__main__":
    main()
