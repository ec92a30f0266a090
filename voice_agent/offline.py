"""Nothing leaves the machine: switch off every library's telemetry and hub look-ups.

The appliance promises that no audio, text or machine facts leave the device, and it sits
on kiosk and car networks where an outbound connection is at best a stalled DNS query and at
worst a policy violation. Some of the libraries it loads would phone home on their own:

- **onnxruntime** (Piper's runtime) ships a telemetry client: while sessions run it
  resolves ``mobile.events.data.microsoft.com`` (seen within seconds of the first synthesis)
  and writes a device id and a database under ``~/.cache/Microsoft``. Measured with
  onnxruntime 1.32 on Linux: only ``ORT_DISABLE_TELEMETRY=1`` in the environment *before
  onnxruntime is imported* stops both; ``onnxruntime.disable_telemetry_events()`` alone, or
  the variable set after the import, stops neither. So the variable is set (forced: the
  appliance has no use for it) before any engine imports onnxruntime, and the API is called
  as well when onnxruntime is already loaded (other builds honour it); a warning says when
  the import came first.
- **huggingface_hub** (imported by faster-whisper and transformers) downloads a model named
  by a size or a repo id and sends telemetry; ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``
  make every hub request fail instead of connecting, ``HF_HUB_DISABLE_TELEMETRY`` and
  ``HF_HUB_DISABLE_IMPLICIT_TOKEN`` stop the usage pings and sending a stored token.
  huggingface_hub reads these once at import, so they are also set on its already imported
  constants.
- ``HF_DATASETS_OFFLINE`` and the cross-tool ``DO_NOT_TRACK``/``DISABLE_TELEMETRY``: for
  any library in the same environment that honours them.

Checked and needing nothing: CTranslate2, llama.cpp (llama-cpp-python connects only in
``Llama.from_pretrained``, through the hub, and in its multimodal chat handlers, which fetch
image URLs; neither is used), Piper itself (downloads
voices only from its command line), vaderSentiment (the translating demo in its
``__main__`` only), tqdm, torch, websockets, soxr, webrtcvad.

The Hugging Face switches are defaults: a value the operator set explicitly is kept (e.g. to
let faster-whisper fetch a size name once); the onnxruntime switch is applied in any case.
:func:`enforce_offline` is idempotent and cheap; ``voice-agent`` calls it first thing,
and :func:`voice_agent.engines.load_engines` calls it for library use, before any engine
imports these libraries.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

ENV_DEFAULTS: dict[str, str] = {
    "ORT_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}
"""Environment switches set (when not already set) by :func:`enforce_offline`."""

_FORCED = {"ORT_DISABLE_TELEMETRY"}
"""Set whatever the environment says: there is no reason to let these through."""

_done = False


def enforce_offline() -> None:
    """Switch off telemetry and network look-ups of every library voice-agent loads.

    Call it before onnxruntime or huggingface_hub is imported; it imports neither.
    """
    global _done
    ort_was_set = os.environ.get("ORT_DISABLE_TELEMETRY") == "1"
    for name, value in ENV_DEFAULTS.items():
        if name in _FORCED:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
    _hub_constants()
    if _done:
        return
    _done = True
    _onnxruntime_telemetry(ort_was_set)


def _hub_constants() -> None:
    # Read by huggingface_hub at import: if something imported it before us, the
    # environment alone no longer counts. Honour an explicit "0" from the operator.
    constants: Any = sys.modules.get("huggingface_hub.constants")
    if constants is None:
        return
    truthy = {"1", "on", "yes", "true"}
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in truthy:
        constants.HF_HUB_OFFLINE = True
    if os.environ.get("HF_HUB_DISABLE_TELEMETRY", "").lower() in truthy:
        constants.HF_HUB_DISABLE_TELEMETRY = True


def _onnxruntime_telemetry(variable_was_set: bool) -> None:
    # Not imported here when absent: the import costs ~0.4 s on every command, and the
    # environment variable set above is what works, as long as it precedes the import.
    onnxruntime: Any = sys.modules.get("onnxruntime")
    if onnxruntime is None:
        return
    disable = getattr(onnxruntime, "disable_telemetry_events", None)
    if disable is not None:
        disable()
    if not variable_was_set:
        log.warning("onnxruntime was imported before voice_agent.offline.enforce_offline(); "
                    "its telemetry may stay on (set ORT_DISABLE_TELEMETRY=1 or call "
                    "enforce_offline() first)")
