"""The `tunesmith` command line (`tunesmith.cli:main`): thin commands that parse, call one plain function, print.

`app` holds the commands, `data` the `tunesmith data ...` group, `merge` the merge and push commands; `common`
the console and `--set` option they share.
"""

from tunesmith.cli.app import _hide_library_notices, app, main, state

__all__ = ["_hide_library_notices", "app", "main", "state"]
