// Reply playback, in the audio thread. Audio is queued as it streams in; `stop_at` drops
// everything past a sample of the turn at once (barge-in: not one more queued word is
// heard), and how much has really been played goes back to the page for `playback` reports.
class ReplyPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.reset(null);
    this.reportedAt = 0;
    this.wasPlaying = false;
    this.port.onmessage = (event) => this.command(event.data);
  }

  reset(turn) {
    this.turn = turn;
    this.chunks = [];
    this.offset = 0; // read position in chunks[0]
    this.queued = 0;
    this.played = 0; // samples of this turn's reply played so far
  }

  command(message) {
    if (message.type === "audio") {
      if (message.turn !== this.turn) this.reset(message.turn);
      this.chunks.push(message.samples);
      this.queued += message.samples.length;
    } else if (message.type === "stop_at") {
      if (message.turn === this.turn) this.keep(Math.max(0, message.samples - this.played));
    } else if (message.type === "flush") {
      this.reset(null);
    }
  }

  keep(samples) {
    const kept = [];
    let left = samples;
    for (let i = 0; i < this.chunks.length && left > 0; i++) {
      let chunk = i === 0 ? this.chunks[0].subarray(this.offset) : this.chunks[i];
      if (chunk.length > left) chunk = chunk.subarray(0, left);
      kept.push(chunk);
      left -= chunk.length;
    }
    this.chunks = kept;
    this.offset = 0;
    this.queued = samples - left;
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let written = 0;
    while (written < out.length && this.chunks.length > 0) {
      const chunk = this.chunks[0];
      const n = Math.min(out.length - written, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + n), written);
      written += n;
      this.offset += n;
      if (this.offset >= chunk.length) {
        this.chunks.shift();
        this.offset = 0;
      }
    }
    out.fill(0, written);
    this.played += written;
    this.queued -= written;
    const playing = this.queued > 0;
    // Every 100 ms while playing, and at once when playback starts or stops.
    if (playing !== this.wasPlaying || (written > 0 && currentTime - this.reportedAt >= 0.1)) {
      this.port.postMessage({ turn: this.turn, played: this.played, playing });
      this.reportedAt = currentTime;
    }
    this.wasPlaying = playing;
    return true;
  }
}

registerProcessor("reply-player", ReplyPlayer);
