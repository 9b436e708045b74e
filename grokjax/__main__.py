"""``python -m grokjax`` is the ``grokjax`` command."""

from grokjax.cli import main

raise SystemExit(main())
