"""For the first import of ``functional_bp/__init__.py``: when this process is the
command line (``python -m functional_bp``, ``functional-bp``), SIGINT and SIGTERM are
handled from here on, before JAX is imported, so that a Ctrl-C while JAX imports is held
for `functional_bp.cli.main` instead of lost in JAX's garbage-collection callback
(`interrupts.install_if_command_line`). In any other process importing this does
nothing. It imports the standard library alone."""

from functional_bp.cli import interrupts

__all__: list[str] = []

interrupts.install_if_command_line()
