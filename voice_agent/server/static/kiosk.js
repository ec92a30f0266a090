// The kiosk page: one native-protocol session over a WebSocket to the server that served it
// (see the README's protocol table). Plain JavaScript, no build step, nothing fetched from
// anywhere but this server.

const INPUT_RATE = 16000; // the capture context's rate: the browser resamples the microphone
const OUTPUT_RATE = 24000; // the reply's rate, asked for in `start`
const FRAME_MS = 20;
const RECONNECT_MAX_S = 10;
const ERROR_SHOWN_MS = 5000;
const TURNS_SHOWN = 30;

const $ = (id) => document.getElementById(id);

const STATE_TEXT = {
  connecting: "Connecting…",
  listening: "Listening",
  thinking: "Thinking…",
  speaking: "Speaking",
  error: "Something went wrong",
  disconnected: "Disconnected",
  reconnecting: "Reconnecting…",
};

// The token comes from the address's #token=… (a fragment never reaches the server or its
// logs) or from the login form, and is kept for this tab only.
function storedToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("voice-agent-token", fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("voice-agent-token");
}

class Audio {
  // Microphone capture (AudioWorklet, PCM16 frames) and reply playback (AudioWorklet queue).
  constructor(onFrame, onPlayed) {
    this.onFrame = onFrame;
    this.onPlayed = onPlayed;
  }

  async open() {
    this.capture = new AudioContext({ sampleRate: INPUT_RATE });
    this.playback = new AudioContext({ sampleRate: OUTPUT_RATE });
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    await this.capture.audioWorklet.addModule("/static/capture.js");
    await this.playback.audioWorklet.addModule("/static/player.js");
    const mic = this.capture.createMediaStreamSource(stream);
    const frameSamples = Math.round((this.capture.sampleRate * FRAME_MS) / 1000);
    const capture = new AudioWorkletNode(this.capture, "mic-capture", {
      numberOfInputs: 1, numberOfOutputs: 0, processorOptions: { frameSamples },
    });
    capture.port.onmessage = (event) => this.onFrame(event.data);
    mic.connect(capture);
    this.player = new AudioWorkletNode(this.playback, "reply-player", { outputChannelCount: [1] });
    this.player.port.onmessage = (event) => this.onPlayed(event.data);
    this.player.connect(this.playback.destination);
  }

  get running() {
    return this.capture.state === "running" && this.playback.state === "running";
  }

  async resume() {
    await Promise.all([this.capture.resume(), this.playback.resume()]);
  }

  play(turn, pcm16) {
    const samples = new Float32Array(pcm16.length);
    for (let i = 0; i < pcm16.length; i++) samples[i] = pcm16[i] / 0x8000;
    this.player.port.postMessage({ type: "audio", turn, samples }, [samples.buffer]);
  }

  stopAt(turn, samples) {
    this.player.port.postMessage({ type: "stop_at", turn, samples });
  }

  flush() {
    this.player.port.postMessage({ type: "flush" });
  }
}

class Kiosk {
  constructor() {
    this.ws = null;
    this.connected = false;
    this.reconnectTimer = null;
    this.backoffS = 1;
    this.needsToken = false;
    this.handsFree = true;
    this.pressed = false;
    this.hearing = false;
    this.thinking = new Set(); // turns waiting for their first reply audio
    this.playing = false;
    this.replyTurn = null; // the turn reply audio belongs to (the last reply event's)
    this.errorUntil = 0;
    this.turns = new Map(); // turn id -> its list item
    // For tests and operators (DevTools): what the page has done so far.
    this.stats = { framesSent: 0, audioReceived: 0, played: 0, events: [], states: [] };
    this.audio = new Audio((frame) => this.sendFrame(frame), (report) => this.played(report));
  }

  async begin() {
    try {
      await this.audio.open();
    } catch (error) {
      this.showError(`No microphone: ${error.message || error.name}`, Infinity);
      return;
    }
    if (!this.audio.running) {
      $("begin").hidden = false; // the browser wants a tap before it plays sound
      await new Promise((resolve) => $("begin-button").addEventListener("click", resolve, { once: true }));
      await this.audio.resume();
      $("begin").hidden = true;
    }
    this.connect();
  }

  // Connection ------------------------------------------------------------------------

  connect() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      const start = {
        type: "start",
        sample_rate: this.audio.capture.sampleRate,
        output_sample_rate: this.audio.playback.sampleRate,
        turn_detection: this.handsFree,
      };
      const token = storedToken();
      if (token) start.token = token;
      ws.send(JSON.stringify(start));
    };
    ws.onmessage = (message) => {
      if (typeof message.data === "string") this.onEvent(JSON.parse(message.data));
      else this.onAudio(new Int16Array(message.data));
    };
    ws.onclose = () => this.onClose(ws);
    this.ws = ws;
    this.render();
  }

  onClose(ws) {
    if (ws !== this.ws) return;
    this.connected = false;
    this.ws = null;
    this.hearing = false;
    this.thinking.clear();
    this.audio.flush();
    if (this.needsToken) {
      $("login").hidden = false;
    } else {
      const waitS = this.backoffS;
      this.backoffS = Math.min(this.backoffS * 2, RECONNECT_MAX_S);
      this.reconnectTimer = setTimeout(() => this.connect(), waitS * 1000);
    }
    this.render();
  }

  send(message) {
    if (this.connected) this.ws.send(JSON.stringify(message));
  }

  sendFrame(frame) {
    if (!this.connected || (!this.handsFree && !this.pressed)) return;
    this.ws.send(frame);
    this.stats.framesSent += 1;
  }

  // Server events -------------------------------------------------------------------

  onEvent(event) {
    this.stats.events.push(event.type);
    switch (event.type) {
      case "ready":
        this.connected = true;
        this.backoffS = 1;
        break;
      case "speech_started":
        this.hearing = true;
        break;
      case "transcript_partial":
        $("partial").textContent = event.text;
        break;
      case "speech_stopped":
        this.hearing = false;
        this.thinking.add(event.turn_id);
        break;
      case "speech_resumed": // the person went on: this turn's reply so far is void
        this.hearing = true;
        this.thinking.delete(event.turn_id);
        this.replyTurn = null;
        this.audio.flush();
        this.turn(event.turn_id).querySelector(".agent").textContent = "";
        break;
      case "transcript":
        $("partial").textContent = "";
        this.turn(event.turn_id).querySelector(".you").textContent = event.text;
        if (event.text) this.thinking.add(event.turn_id); // a typed turn has no speech_stopped
        break;
      case "emotion":
        this.showEmotion(event);
        break;
      case "reply_text":
        this.replyTurn = event.turn_id;
        this.turn(event.turn_id).querySelector(".agent").textContent += event.delta;
        break;
      case "reply_resumed":
        this.replyTurn = event.turn_id; // its audio comes again from audio_samples
        break;
      case "reply_paused":
        this.audio.stopAt(event.turn_id, event.audio_samples);
        break;
      case "reply_interrupted":
        this.audio.stopAt(event.turn_id, event.audio_samples);
        this.turn(event.turn_id).querySelector(".agent").classList.add("interrupted");
        break;
      case "turn_done":
        this.thinking.delete(event.turn_id);
        if (event.status === "backchannel" || event.status === "empty") this.forget(event.turn_id);
        break;
      case "error":
        if (event.code === "unauthorized") this.needsToken = true;
        this.showError(event.message || event.code, ERROR_SHOWN_MS);
        if (event.turn_id != null) this.thinking.delete(event.turn_id);
        break;
      case "session_end": // idle or at its maximum length: a fresh session, at once
        if (event.reason !== "shutdown") this.backoffS = 0;
        break;
    }
    this.render();
  }

  onAudio(pcm16) {
    if (this.replyTurn == null) return;
    this.stats.audioReceived += pcm16.length;
    this.audio.play(this.replyTurn, pcm16);
  }

  played(report) {
    this.playing = report.playing;
    if (report.turn != null) {
      if (report.played > 0) this.thinking.delete(report.turn);
      this.stats.played = report.played;
      // The server's playback clock: what was heard, so an interruption keeps just that.
      this.send({ type: "playback", turn_id: report.turn, audio_samples: report.played });
    }
    this.render();
  }

  // Push to talk and typed turns ----------------------------------------------------

  setHandsFree(on) {
    this.handsFree = on;
    $("talk").hidden = on;
    this.send({ type: "update", turn_detection: on });
    this.render();
  }

  press() {
    if (this.pressed) return;
    this.pressed = true;
    $("talk").classList.add("pressed");
    this.interruptReply();
    this.send({ type: "clear" });
    this.render();
  }

  release() {
    if (!this.pressed) return;
    this.pressed = false;
    $("talk").classList.remove("pressed");
    this.send({ type: "commit" });
    this.render();
  }

  type(text) {
    if (!text.trim()) return;
    this.interruptReply();
    this.send({ type: "text", text });
  }

  interruptReply() {
    if (!this.playing) return;
    this.replyTurn = null; // what is still on its way is dropped too
    this.audio.flush(); // silent at once; the server hears why from `cancel`
    this.send({ type: "cancel" });
  }

  // What is shown ---------------------------------------------------------------------

  turn(id) {
    let item = this.turns.get(id);
    if (!item) {
      item = document.createElement("li");
      item.innerHTML = '<p class="you"></p><p class="agent"></p>';
      $("conversation").append(item);
      this.turns.set(id, item);
      while (this.turns.size > TURNS_SHOWN) this.forget(this.turns.keys().next().value);
    }
    item.scrollIntoView({ block: "end" });
    return item;
  }

  forget(id) {
    const item = this.turns.get(id);
    if (item && !item.querySelector(".agent").textContent) item.remove();
    if (item) this.turns.delete(id);
  }

  showEmotion(event) {
    const text = `${event.label} (${Math.round(event.confidence * 100)}%)`;
    $("emotion").textContent = `You sounded ${text}`;
    $("emotion").hidden = false;
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = event.label;
    this.turn(event.turn_id).querySelector(".you").after(tag);
  }

  showError(message, forMs) {
    $("error").textContent = message;
    $("error").hidden = false;
    this.errorUntil = performance.now() + forMs;
    if (Number.isFinite(forMs)) setTimeout(() => this.render(), forMs + 10);
    this.render();
  }

  state() {
    if (!this.connected) {
      if (this.needsToken) return "disconnected";
      return this.reconnectTimer ? "reconnecting" : this.ws ? "connecting" : "disconnected";
    }
    if (this.playing) return "speaking";
    if (this.thinking.size > 0) return "thinking";
    if (performance.now() < this.errorUntil) return "error";
    return "listening";
  }

  render() {
    const state = this.state();
    if (this.stats.states[this.stats.states.length - 1] !== state) this.stats.states.push(state);
    document.body.dataset.state = state;
    document.body.classList.toggle("hearing", this.hearing || this.pressed);
    let text = STATE_TEXT[state];
    if (state === "listening" && !this.handsFree && !this.pressed) text = "Hold the button to talk";
    else if (state === "listening" && (this.hearing || this.pressed)) text = "Listening…";
    $("state").textContent = text;
    if (performance.now() >= this.errorUntil) $("error").hidden = true;
  }
}

const kiosk = new Kiosk();
window.voiceAgent = kiosk;

for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener("change", () => kiosk.setHandsFree(radio.value === "hands-free"));
}
const talk = $("talk");
talk.addEventListener("pointerdown", (event) => { talk.setPointerCapture(event.pointerId); kiosk.press(); });
talk.addEventListener("pointerup", () => kiosk.release());
talk.addEventListener("pointercancel", () => kiosk.release());
document.addEventListener("keydown", (event) => {
  if (event.code === "Space" && !kiosk.handsFree && event.target === document.body) {
    event.preventDefault();
    kiosk.press();
  }
});
document.addEventListener("keyup", (event) => {
  if (event.code === "Space" && !kiosk.handsFree) kiosk.release();
});
$("typed").addEventListener("submit", (event) => {
  event.preventDefault();
  kiosk.type($("typed-text").value);
  $("typed-text").value = "";
});
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("voice-agent-token", $("login-token").value);
  $("login").hidden = true;
  kiosk.needsToken = false;
  kiosk.connect();
});

kiosk.begin();
