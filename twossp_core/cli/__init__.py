"""The `twossp` command line: one module per command (prune, evaluate, sweep, export, convert_gguf), the flags
and request fields they share (`options`), how they run a job (`running`) and print its report (`summary`), and
the library's messages in the command line's terms (`terms`); `main` builds the parser and maps errors to exit
codes. Subcommands also come through the `twossp.commands` entry-point group (the service adds `serve` and `keys`).
"""
