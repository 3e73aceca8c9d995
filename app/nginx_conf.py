"""nginx's configuration for a cluster on one machine, filled in from ``deploy/nginx.conf.in``.

`bin/cluster` and the fault tests (`tests/support/cluster.py`) both write their nginx.conf
with `render`, so the topology tested is the topology shipped. As a command::

    python -m app.nginx_conf --cluster DIR --port P --actions-port A [--user "user nobody nogroup;"] APP_PORT...

prints the configuration.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf.in"


def render(
    *,
    cluster_dir: Path,
    port: int,
    actions_port: int,
    app_ports: Sequence[int],
    user_line: str = "",
    template: str | None = None,
) -> str:
    """The template with its ``@…@`` fields filled in.

    Args:
        cluster_dir: where nginx keeps its pid, temporary files and error log (``@CLUSTER@``).
        port: the public listener (``@PORT@``).
        actions_port: the internal listener for the engines' action calls (``@ACTIONS_PORT@``).
        app_ports: the apps on loopback, one ``server`` line each (``@SERVERS@``).
        user_line: ``user …;`` when nginx starts as root, else empty (``@USER@``).
        template: the template's text; by default ``deploy/nginx.conf.in``.
    """
    if not app_ports:
        raise ValueError("nginx needs at least one app to send requests to")
    text = TEMPLATE.read_text(encoding="utf-8") if template is None else template
    servers = "".join(f"    server 127.0.0.1:{app_port} max_fails=1 fail_timeout=5s;\n" for app_port in app_ports)
    lines = [servers.rstrip("\n") if line.strip() == "@SERVERS@" else line for line in text.split("\n")]
    return (
        "\n".join(lines)
        .replace("@USER@", user_line)
        .replace("@CLUSTER@", str(cluster_dir))
        .replace("@ACTIONS_PORT@", str(actions_port))
        .replace("@PORT@", str(port))
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.nginx_conf", description=__doc__.split("\n")[0])
    parser.add_argument("--cluster", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--actions-port", type=int, required=True)
    parser.add_argument("--user", default="")
    parser.add_argument("app_ports", type=int, nargs="+")
    args = parser.parse_args(argv)
    print(
        render(
            cluster_dir=args.cluster,
            port=args.port,
            actions_port=args.actions_port,
            app_ports=args.app_ports,
            user_line=args.user,
        ),
        end="",
    )


if __name__ == "__main__":
    main()
