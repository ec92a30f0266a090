"""The kiosk page: its files over HTTP, and the page itself in a real browser (Debian's
Chromium driven by Playwright) whose fake microphone plays a spoken question."""

from __future__ import annotations

import asyncio
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import fixture_clips, make_config
from voice_agent.audio.pcm import read_audio
from voice_agent.engines import Engines
from voice_agent.server.kiosk import assets
from voice_agent.server.ws import VoiceServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    # As root in a container, and with nothing reaching out to the internet.
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # A kiosk's own settings: the microphone allowed, sound without a tap.
    "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required",
    "--use-fake-device-for-media-stream",
]
OUTPUT_RATE = 24_000  # what the page asks for
SVG_NAMESPACE = b'xmlns="http://www.w3.org/2000/svg"'


def http_get(url: str, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_the_page_and_only_its_own_files_are_served(engines: Engines) -> None:
    async with VoiceServer(engines, make_config()) as server:
        base = f"http://127.0.0.1:{server.port}"
        status, headers, body = await asyncio.to_thread(http_get, base + "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "'self'" in headers["Content-Security-Policy"]
        html = body.decode()
        linked = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert "/static/kiosk.js" in linked and "/static/kiosk.css" in linked
        assert {"/static/capture.js", "/static/player.js"} <= set(assets())  # the worklets
        for path in sorted({*linked, *assets()}):
            status, headers, body = await asyncio.to_thread(http_get, base + path)
            assert status == 200 and body, path
            # Nothing from anywhere else: no CDN, no fonts, no absolute URLs at all (an SVG
            # namespace is a name, never fetched).
            assert not re.search(rb"https?://", body.replace(SVG_NAMESPACE, b"")), path
        assert (await asyncio.to_thread(http_get, base + "/static/missing.js"))[0] == 404
        assert (await asyncio.to_thread(http_get, base + "/static/../ws.py"))[0] == 404
    async with VoiceServer(engines, make_config(server={"page": False})) as server:
        status, _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{server.port}/")
        assert status != 200 and b"<html" not in body


# --- in Chromium -------------------------------------------------------------------------


def question_wav(folder: Path, *, lead_s: float, tail_s: float) -> Path:
    """The fake microphone's recording: silence, a spoken question, silence."""
    clip = fixture_clips()[0]  # "What time does the pharmacy open tomorrow?"
    samples, rate = read_audio(clip.path)
    audio = np.concatenate([np.zeros(int(rate * lead_s), np.int16), samples,
                            np.zeros(int(rate * tail_s), np.int16)])
    path = folder / "question.wav"
    sf.write(path, audio, rate, subtype="PCM_16")
    return path


@asynccontextmanager
async def chromium(microphone: Path) -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/bootstrap installs it)")
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={microphone}%noloop"])
        try:
            yield browser
        finally:
            await browser.close()


class Page:
    """A kiosk page with everything it did recorded: states, page errors, requests."""

    def __init__(self, page: Any, base: str) -> None:
        self.page, self.base = page, base
        self.errors: list[str] = []
        self.foreign: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)
        page.on("request", self._request)
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.errors.append(f"{response.status} {response.url}")

    def _request(self, request: Any) -> None:
        if not request.url.startswith((self.base, self.base.replace("http", "ws", 1))):
            self.foreign.append(request.url)

    @classmethod
    async def open(cls, browser: Any, base: str) -> Page:
        page = await browser.new_page()
        kiosk = cls(page, base)
        await page.goto(base + "/")
        return kiosk

    async def until(self, condition: str, timeout_s: float = 60.0) -> None:
        # Polled from here: Playwright's wait_for_function evaluates a string inside the
        # page, which the page's Content-Security-Policy (rightly) forbids.
        try:
            async with asyncio.timeout(timeout_s):
                while not await self.page.evaluate(condition):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            stats = await self.page.evaluate("JSON.stringify(window.voiceAgent.stats)")
            raise AssertionError(f"not within {timeout_s} s: {condition}; page: {stats}; "
                                 f"errors: {self.errors}") from None

    async def value(self, expression: str) -> Any:
        return await self.page.evaluate(expression)


async def test_a_spoken_question_is_shown_answered_and_played_in_chromium(
    engines: Engines, tmp_path: Path,
) -> None:
    microphone = question_wav(tmp_path, lead_s=3.0, tail_s=5.0)
    server = await VoiceServer(engines, make_config()).start()
    port = server.port
    base = f"http://127.0.0.1:{port}"
    try:
        async with chromium(microphone) as browser:
            kiosk = await Page.open(browser, base)
            await kiosk.until("document.body.dataset.state === 'listening'", 30)
            await kiosk.until("document.querySelector('.you')?.textContent.length > 0")
            heard = (await kiosk.value("document.querySelector('.you').textContent")).lower()
            assert "pharmacy" in heard, heard
            # The reply as it is spoken, and its audio played (not just received).
            await kiosk.until("document.querySelector('.agent')?.textContent.length > 0")
            await kiosk.until(f"window.voiceAgent.stats.played > {OUTPUT_RATE // 2}")
            await kiosk.until("!document.querySelector('#emotion').hidden")
            await kiosk.until("document.body.dataset.state === 'listening'")
            states = await kiosk.value("window.voiceAgent.stats.states")
            for state in ("listening", "thinking", "speaking"):
                assert state in states, states
            assert states.index("thinking") < states.index("speaking")
            await kiosk.page.screenshot(path=str(tmp_path / "kiosk.png"))
            assert not kiosk.errors, kiosk.errors
            assert not kiosk.foreign, kiosk.foreign

            # The appliance goes away: the page says so and keeps trying; back, it resumes.
            await server.stop()
            await kiosk.until("document.body.dataset.state === 'reconnecting'", 20)
            server = await VoiceServer(
                engines, make_config(server={"port": port})).start()
            await kiosk.until("document.body.dataset.state === 'listening'", 30)
    finally:
        await server.stop()


async def test_push_to_talk_hears_only_while_held_and_a_press_silences_the_reply(
    engines: Engines, tmp_path: Path,
) -> None:
    # The question starts LEAD_S after the page opens its microphone: pressed before that,
    # released once all of it has surely played. The times come from the clock, not fixed
    # sleeps: on a starved machine the page took over 5 s to start, and a press made after
    # the question had begun missed it.
    lead_s, tail_s = 10.0, 20.0
    microphone = question_wav(tmp_path, lead_s=lead_s, tail_s=tail_s)
    question_s = sf.info(microphone).duration - lead_s - tail_s
    loop = asyncio.get_running_loop()
    async with VoiceServer(engines, make_config()) as server, chromium(microphone) as browser:
        opened = loop.time()  # the microphone opens after this, and before 'listening'
        kiosk = await Page.open(browser, f"http://127.0.0.1:{server.port}")
        await kiosk.until("document.body.dataset.state === 'listening'", 30)
        listening = loop.time()
        await kiosk.page.check("input[value='push-to-talk']")
        await kiosk.until("!document.querySelector('#talk').hidden")
        talk = await kiosk.page.query_selector("#talk")
        box = await talk.bounding_box()
        await kiosk.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        await kiosk.page.mouse.down()
        assert loop.time() - opened < lead_s, "the page took so long that the question began"
        await asyncio.sleep(0.5)
        await kiosk.until("document.body.classList.contains('hearing')", 1)
        await asyncio.sleep(max(0.0, listening + lead_s + question_s + 1.5 - loop.time()))
        await kiosk.page.mouse.up()
        await kiosk.until("document.querySelector('.you')?.textContent.length > 0")
        heard = (await kiosk.value("document.querySelector('.you').textContent")).lower()
        assert "pharmacy" in heard, heard
        await kiosk.until("document.body.dataset.state === 'speaking'")
        # Pressed again mid-reply: silent at once (the player's queue is dropped, not
        # played out), and the reply is cancelled on the server.
        await kiosk.until(f"window.voiceAgent.stats.played > {OUTPUT_RATE // 4}")
        await kiosk.page.mouse.down()
        await asyncio.sleep(0.15)
        played = await kiosk.value("window.voiceAgent.stats.played")
        await asyncio.sleep(0.5)
        assert await kiosk.value("window.voiceAgent.stats.played") == played
        assert await kiosk.value("window.voiceAgent.playing") is False
        await kiosk.page.mouse.up()
        await kiosk.until("window.voiceAgent.stats.events.includes('turn_done')")
        assert not kiosk.errors, kiosk.errors
