"""``voice-agent``: serve | client | --mic | transcribe | say | bench | doctor.

Every command prints one clear line for expected failures (``voice-agent: error [code]:
message``, exit 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from voice_agent import __version__
from voice_agent.config import Config, describe, load_config
from voice_agent.errors import VoiceAgentError

log = logging.getLogger("voice_agent")


def _progress(message: str) -> None:
    print(f"voice-agent: {message}", file=sys.stderr, flush=True)


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {
        "server": {"host": getattr(args, "host", None), "port": getattr(args, "port", None)},
        "llm": {"engines": getattr(args, "llm", None)},
        "wake": {"phrase": getattr(args, "wake", None)},
        "wyoming": {"uri": getattr(args, "wyoming", None)},
    }
    return load_config(args.config, overrides=overrides)


def _load_engines(config: Config) -> Any:
    from voice_agent.engines import load_engines

    _progress("loading models (ASR, LLM, TTS)…")
    started = time.perf_counter()
    engines = load_engines(config)
    loaded = ", ".join(f"{k} {v:.1f}s" for k, v in engines.load_seconds.items())
    _progress(f"models ready in {time.perf_counter() - started:.1f} s ({loaded})")
    return engines


# --- serve ------------------------------------------------------------------------------


async def _serve(config: Config) -> None:
    from voice_agent import sdnotify
    from voice_agent.server.access import build_policy, ssl_context
    from voice_agent.server.ws import VoiceServer

    build_policy(config.server)  # refuse an exposed, token-less setup before loading models
    ssl_context(config.server)
    scheme = "wss" if config.server.tls_cert else "ws"
    engines = _load_engines(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with VoiceServer(engines, config) as server, \
                contextlib.AsyncExitStack() as others:
            _progress(f"listening on {scheme}://{config.server.host}:{server.port} "
                      "(Ctrl-C stops)")
            if config.wyoming.uri:
                from voice_agent.server.wyoming import WyomingServer
                from voice_agent.server.wyoming_address import parse_uri

                host, port = parse_uri(config.wyoming.uri)
                wyoming = await others.enter_async_context(
                    WyomingServer(server.appliance, host, port))
                _progress(f"Wyoming on tcp://{host}:{wyoming.port}")
            sdnotify.notify("READY=1\nSTATUS=serving")
            interval = sdnotify.watchdog_interval_s()
            watchdog = asyncio.create_task(sdnotify.watchdog_loop(interval)) if interval else None
            await stop.wait()
            _progress("stopping: finishing running turns…")
            sdnotify.notify("STOPPING=1")
            # Sessions get their turn_done and session_end (bounded by server.drain_timeout_s
            # + send + close timeouts); the watchdog keeps pinging meanwhile.
            await server.drain()
            if watchdog is not None:
                watchdog.cancel()
    finally:
        engines.close()


def cmd_serve(args: argparse.Namespace) -> int:
    asyncio.run(_serve(_config(args)))
    return 0


# --- client -----------------------------------------------------------------------------


def cmd_client(args: argparse.Namespace) -> int:
    from voice_agent.audio.pcm import write_wav
    from voice_agent.client import stream_file

    result = asyncio.run(stream_file(
        args.file, args.url, output_rate=args.output_rate,
        trailing_silence_s=args.trailing_silence, realtime=not args.fast,
        token=args.token or os.environ.get("VOICE_AGENT_TOKEN") or None, ca_file=args.ca_file,
    ))
    if args.output:
        write_wav(args.output, result.reply_audio, result.output_sample_rate)
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        print(f"you said:   {result.transcript}")
        print(f"it replied: {result.reply_text}")
        v2v = "n/a" if result.voice_to_voice_ms is None else f"{result.voice_to_voice_ms:.0f} ms"
        print(f"reply audio {result.reply_audio_seconds:.2f} s, voice-to-voice {v2v}")
        for error in result.errors:
            print(f"error [{error['code']}]: {error['message']}")
    return 1 if result.errors else 0


# --- transcribe / say -------------------------------------------------------------------


def cmd_transcribe(args: argparse.Namespace) -> int:
    from voice_agent.audio.frontend import make_frontend, process_recording
    from voice_agent.audio.pcm import read_audio
    from voice_agent.engines import load_asr
    from voice_agent.models import Manifest

    config = _config(args)
    manifest = Manifest.load(config.models.manifest, config.models.directory or None)
    asr = load_asr(config, manifest)
    for path in args.files:
        audio, _ = read_audio(path)
        if not args.raw:
            # The same frontend the live pipeline uses, so this checks what the service hears.
            cleaned = process_recording(make_frontend(config.frontend), audio)
            audio = cleaned if cleaned.size else audio
        text = asr.transcribe(audio).text
        print(f"{path}\t{text}" if len(args.files) > 1 else text, flush=True)
    return 0


def cmd_say(args: argparse.Namespace) -> int:
    import threading

    from voice_agent.audio.pcm import write_wav
    from voice_agent.engines import load_tts
    from voice_agent.models import Manifest

    config = _config(args)
    manifest = Manifest.load(config.models.manifest, config.models.directory or None)
    tts = load_tts(config, manifest)
    chunks = list(tts.synthesize(args.text, threading.Event()))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    write_wav(args.output, audio, tts.sample_rate)
    _progress(f"wrote {args.output} ({audio.size / tts.sample_rate:.2f} s)")
    return 0


# --- mic / bench / doctor ---------------------------------------------------------------


def cmd_mic(args: argparse.Namespace) -> int:
    from voice_agent.mic import open_sounddevice, run_mic

    config = _config(args)
    open_sounddevice()  # fail in one line before spending seconds on loading models
    engines = _load_engines(config)
    try:
        asyncio.run(run_mic(engines, config,
                            half_duplex=getattr(args, "half_duplex", False)))
    finally:
        engines.close()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from voice_agent.bench import run_bench

    config = _config(args)
    if args.echo:
        from voice_agent.bench_echo import run_echo_bench

        return asyncio.run(run_echo_bench(config, quick=args.quick, json_path=args.json))
    if args.turn_taking:
        from voice_agent.bench_turns import run_turns_bench

        return asyncio.run(run_turns_bench(config, quick=args.quick, json_path=args.json))
    if args.emotion:
        from voice_agent.bench_emotion import run_emotion_bench

        return asyncio.run(run_emotion_bench(config, quick=args.quick, json_path=args.json))
    if args.people:
        from voice_agent.bench_people import run_people_bench

        return asyncio.run(run_people_bench(config, people=args.people, turns=args.turns,
                                            json_path=args.json))
    return asyncio.run(run_bench(config, json_path=args.json, limit=args.clips,
                                 concurrency=args.concurrency))


def cmd_doctor(args: argparse.Namespace) -> int:
    from voice_agent.asr import cuda_available
    from voice_agent.models import Manifest

    config = _config(args)
    print(json.dumps(describe(config), indent=2))
    manifest = Manifest.load(config.models.manifest, config.models.directory or None)
    ok = True
    for entry in manifest.entries:
        try:
            resolved = manifest.resolve(entry.role, entry.name)
            state = "ok (sha256 verified)" if resolved.verified else "ok"
        except VoiceAgentError as exc:
            state, ok = f"FAILED: {exc}", ok and not entry.default
        print(f"{entry.role:4} {entry.name:40} {state}")
    print(f"CUDA for ASR: {'yes' if cuda_available() else 'no (CPU int8)'}")
    try:
        import sounddevice

        print(f"sound devices: {len(sounddevice.query_devices())}")
    except OSError as exc:
        print(f"sound devices: unavailable ({exc})")
    return 0 if ok else 2


# --- entry point ------------------------------------------------------------------------


WAKE_HELP = ("answer only after this wake phrase (then follow-ups for wake.follow_up_s): "
             "okay_nabu, hey_jarvis, hey_mycroft, alexa")
HALF_DUPLEX_HELP = ("--mic: mute the microphone while it speaks (no barge-in), for a sound "
                    "device where echo cancellation does not work")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voice-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"voice-agent {__version__}")
    parser.add_argument("--mic", action="store_true", help="talk to it through the sound device")
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument("--wake", metavar="NAME", help=WAKE_HELP)
    parser.add_argument("--half-duplex", action="store_true", help=HALF_DUPLEX_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file")
        return p

    def llm_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--llm", action="append", metavar="SPEC",
                       help="LLM engine, repeat in fallback order: llama_cpp:default, "
                            "llama_cpp:FILE.gguf, transformers:default, "
                            "openai:http://HOST:PORT/v1#MODEL")

    def wake_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wake", metavar="NAME", default=argparse.SUPPRESS, help=WAKE_HELP)

    p = command("serve", "run the WebSocket endpoint")
    wake_option(p)
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8765; 0 picks one)")
    p.add_argument("--wyoming", metavar="tcp://HOST:PORT",
                   help="also serve Wyoming (Home Assistant) there, sharing the models")
    llm_option(p)
    p.set_defaults(func=cmd_serve)

    p = command("client", "stream an audio file to an appliance and save its reply")
    p.add_argument("file", help="WAV/FLAC file of speech")
    p.add_argument("--url", default="ws://127.0.0.1:8765", help="appliance URL")
    p.add_argument("-o", "--output", help="write the reply audio to this WAV file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--output-rate", type=int, help="reply sample rate (default: the file's)")
    p.add_argument("--trailing-silence", type=float, default=2.0, help="seconds after speech")
    p.add_argument("--fast", action="store_true", help="send faster than real time")
    p.add_argument("--token", help="access token (default: $VOICE_AGENT_TOKEN; the "
                                   "environment keeps it out of the process list)")
    p.add_argument("--ca-file", help="CA/certificate file to trust for a wss:// URL")
    p.set_defaults(func=cmd_client)

    p = command("transcribe", "transcribe audio files with the configured ASR")
    p.add_argument("files", nargs="+", help="WAV/FLAC files")
    p.add_argument("--raw", action="store_true", help="skip the noise-suppression frontend")
    p.set_defaults(func=cmd_transcribe)

    p = command("say", "speak text to a WAV file with the configured TTS")
    p.add_argument("text")
    p.add_argument("-o", "--output", required=True, help="output WAV file")
    p.set_defaults(func=cmd_say)

    p = command("mic", "talk to it through the sound device (same as --mic)")
    wake_option(p)
    p.add_argument("--half-duplex", action="store_true", default=argparse.SUPPRESS,
                   help=HALF_DUPLEX_HELP)
    llm_option(p)
    p.set_defaults(func=cmd_mic)

    p = command("bench", "measure per-stage and voice-to-voice latency on real speech")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--clips", type=int, help="use at most this many clips")
    p.add_argument("--concurrency", type=int, default=1, choices=range(1, 17),
                   metavar="N", help="conversations at once (default 1)")
    p.add_argument("--people", type=int, choices=range(1, 33), metavar="N",
                   help="instead: N people talking like people (speak, hear the reply out, "
                        "pause 1-3 s, speak again), against one person alone, same run")
    p.add_argument("--turns", type=int, default=5, help="utterances per person (--people)")
    p.add_argument("--turn-taking", action="store_true",
                   help="instead: turn-taking (pauses, cut-offs, words lost, voice-to-voice), "
                        "fixed silence against the [turn] settings, same run")
    p.add_argument("--echo", action="store_true",
                   help="instead: its own echo, barge-in and false interruptions in a simulated "
                        "room (real-time clients, the default config)")
    p.add_argument("--emotion", action="store_true",
                   help="instead: how the emotion tag follows the voice, on the acted clips of "
                        "../shared/audio/emotion (each speaker's clips as one conversation)")
    p.add_argument("--quick", action="store_true",
                   help="a small subset (--turn-taking, --echo, --emotion)")
    llm_option(p)
    p.set_defaults(func=cmd_bench)

    p = command("doctor", "check models, checksums, GPU and sound devices")
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from voice_agent.offline import enforce_offline

    enforce_offline()  # before any library that could phone home is imported
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if args.mic:
        args.func = cmd_mic
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
        return code
    except VoiceAgentError as exc:
        print(f"voice-agent: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # e.g. a port in use, a file that cannot be written
        print(f"voice-agent: error [os_error]: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

