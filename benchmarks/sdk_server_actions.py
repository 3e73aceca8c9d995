"""The actions the benchmark's stand-alone rasa_sdk server serves: only those built without arguments.

Started as ``.venv/bin/python -m rasa_sdk --actions benchmarks.sdk_server_actions`` by
``benchmarks/run_benchmarks.py``, to compare rasa_sdk's own Sanic server with the
executor the app mounts in aiohttp (``bot/action_endpoint.py``) on identical calls.

rasa_sdk's server registers *every* subclass of ``Action`` imported in its process and
builds each with no arguments. Importing ``actions.report`` also imports the actions that
take a database session factory (``ActionSubmitReport``, ``ActionHandoff``, ...), and that
scan would crash on them. So, in the benchmark's server process only, registration is
narrowed to the classes listed in ``ACTIONS``; the app is not affected.
"""

from __future__ import annotations

from rasa_sdk.executor import ActionExecutor

from actions.report import ActionCancelRequest, ActionStartReport

__all__ = ["ACTIONS", "ActionCancelRequest", "ActionStartReport"]

ACTIONS = (ActionStartReport, ActionCancelRequest)


def _register_listed_actions(executor: ActionExecutor) -> None:
    """Register the no-argument actions above instead of every `Action` subclass in memory."""
    for action in ACTIONS:
        executor.register_action(action)


ActionExecutor._register_all_actions = _register_listed_actions  # type: ignore[method-assign]
