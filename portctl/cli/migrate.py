"""``portctl migrate``: copy a whole store into another, e.g. from the JSON file to etcd."""

from __future__ import annotations

from typing import Annotated

from portctl.cli._common import JsonOption, StoreOption, handled, opened
from portctl.cli._output import emit
from portctl.cli._params import Commands, Option

app = Commands(rich_markup_mode=None)


@app.command()
def migrate(
    to: Annotated[
        str,
        Option(
            "--to",
            metavar="URL",
            help="The empty store to copy into, e.g. etcd://h1:2379,h2:2379 or file:///srv/store.json.",
        ),
    ],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy every allocation, registration and color from the store into another, empty one.

    The source is left as it is; the copy is read back and compared before it is reported.

    Example: portctl migrate --to etcd://10.0.0.5:2379,10.0.0.6:2379
    """
    from portctl.backends import open_store
    from portctl.config.settings import store_url
    from portctl.operations.migrate import migrate as copy_store

    with handled(as_json), opened(store) as ctx:
        target = open_store(store_url(to))
        try:
            report = copy_store(ctx.store, target)
        finally:
            target.close()
        kinds = ", ".join(f"{n} {kind}" for kind, n in report.by_kind.items()) or "nothing"
        emit(
            as_json,
            report.to_dict(),
            f"copied {report.copied} key(s) from {report.source} to {report.target}: {kinds}",
        )
