"""Audio: PCM conversion and resampling, the frontend (NS/AGC, echo reference), VAD and
endpointing. Pure numpy where possible."""
