"""kombu's filesystem transport (the local profile's broker) with messages that appear whole.

kombu writes a message by creating its file and then writing into it; a consumer polling the folder
can move and read the file in between, get an empty payload and stop with an unrecoverable JSON
error (seen under load: a worker died and its run stalled). Here a message is written to a hidden
name first and renamed into place, which is atomic within one folder, so a consumer only ever sees
complete messages. Selected with Celery's ``broker_transport`` (``tasks/app.py``)."""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: ``_get`` matches ``name.partition('.')[2] == '<queue>.msg'``, never true here.
        partial = os.path.join(self.data_folder_out, f".partial-{name}")
        try:
            with open(partial, "wb", buffering=0) as f:
                f.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
